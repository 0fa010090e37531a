"""Evaluation: FAISS kNN, feature extraction, and the kNN monitor callback."""

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy, knn_scores
from selfsup.eval.monitor import KNNMonitor

__all__ = ["extract_features", "knn_accuracy", "knn_scores", "KNNMonitor"]
