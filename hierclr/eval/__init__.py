"""Evaluation of learned representations: weighted kNN (HCSC Eq. 11), clustering scores, hierarchical
classification (per-level accuracy, hierarchical violation rate), and the quality of ICSC's negative selection
against the labels (HCSC Fig. 5)."""

from hierclr.eval.clustering_scores import clustering_scores, hungarian_accuracy
from hierclr.eval.hierarchical import hierarchical_violation_rate, hierarchy_metrics, level_accuracy, parent_tables
from hierclr.eval.knn import knn_accuracy, knn_classify, knn_predict
from hierclr.eval.selection_quality import selection_counts, selection_quality

__all__ = [
    "clustering_scores",
    "hierarchical_violation_rate",
    "hierarchy_metrics",
    "hungarian_accuracy",
    "knn_accuracy",
    "knn_classify",
    "knn_predict",
    "level_accuracy",
    "parent_tables",
    "selection_counts",
    "selection_quality",
]
