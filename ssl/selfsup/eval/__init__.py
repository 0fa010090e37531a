"""Evaluation: FAISS kNN, feature extraction, the kNN monitor callback, and the predict feature writer."""

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy, knn_scores
from selfsup.eval.monitor import KNNMonitor
from selfsup.eval.writer import FeatureWriter

__all__ = ["extract_features", "knn_accuracy", "knn_scores", "KNNMonitor", "FeatureWriter"]
