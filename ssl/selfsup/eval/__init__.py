"""Evaluation: FAISS kNN, features, probes (linear, dense), fine-tuning, export, plots, the kNN monitor."""

from selfsup.eval.dense import DenseFineTune, DenseProbe
from selfsup.eval.dense_plot import DensePlot
from selfsup.eval.features import extract_features, split_features
from selfsup.eval.finetune import FineTune
from selfsup.eval.knn import knn_accuracy, knn_evaluate, knn_scores
from selfsup.eval.monitor import KNNMonitor
from selfsup.eval.plot import EmbeddingPlot
from selfsup.eval.probe import FrozenProbe, LinearProbe
from selfsup.eval.reconstruction import ReconstructionGrid
from selfsup.eval.writer import FeatureWriter

__all__ = ["DenseFineTune", "DensePlot", "DenseProbe", "EmbeddingPlot", "FeatureWriter", "FineTune", "FrozenProbe",
           "KNNMonitor", "LinearProbe", "ReconstructionGrid", "extract_features", "knn_accuracy", "knn_evaluate",
           "knn_scores", "split_features"]
