"""Evaluation of learned representations: weighted kNN (HCSC Eq. 11) and clustering scores."""

from hierclr.eval.clustering_scores import clustering_scores, hungarian_accuracy
from hierclr.eval.knn import knn_accuracy, knn_classify, knn_predict

__all__ = [
    "clustering_scores",
    "hungarian_accuracy",
    "knn_accuracy",
    "knn_classify",
    "knn_predict",
]
