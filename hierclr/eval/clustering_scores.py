"""Clustering quality against ground-truth classes: NMI, AMI and Hungarian-matched accuracy.

Used to score the prototype assignments of each hierarchy level (HCSC reports these for its
clusterings). ``acc`` is the best one-to-one matching of clusters to classes,

    acc = max_{injective m} (1/n) sum_i [m(a_i) == y_i],

solved with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
cluster x class contingency matrix. When the numbers of clusters and classes differ only
``min(#clusters, #classes)`` pairs are matched; samples of unmatched clusters count as wrong.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

__all__ = ["clustering_scores", "hungarian_accuracy"]

ArrayLike = torch.Tensor | np.ndarray


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` (numpy, torch on any device, or a sequence) as a 1-D numpy array; NaN rejected."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biufUS":
        raise ValueError(f"{name} must hold integer or string labels, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or inf values")
    return arr


def _check_pair(labels: ArrayLike, assignments: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _as_1d(labels, "labels")
    a = _as_1d(assignments, "assignments")
    if y.shape[0] != a.shape[0]:
        raise ValueError(f"labels and assignments must have the same length, got {y.shape[0]} and {a.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("labels and assignments are empty")
    return y, a


def _contingency(y: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``(n_clusters, n_classes)`` counts; rows/columns follow the sorted unique ids."""
    _, a_idx = np.unique(a, return_inverse=True)
    _, y_idx = np.unique(y, return_inverse=True)
    a_idx = a_idx.reshape(-1)
    y_idx = y_idx.reshape(-1)
    n_a, n_y = int(a_idx.max()) + 1, int(y_idx.max()) + 1
    counts = np.bincount(a_idx * n_y + y_idx, minlength=n_a * n_y)
    return counts.reshape(n_a, n_y)


def _hungarian(y: np.ndarray, a: np.ndarray) -> float:
    table = _contingency(y, a)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum()) / y.shape[0]


def hungarian_accuracy(labels: ArrayLike, assignments: ArrayLike) -> float:
    """Accuracy of the best one-to-one cluster -> class matching (Hungarian algorithm).

    Cluster and class ids may be arbitrary (any integers/strings, need not be contiguous);
    the numbers of clusters and classes may differ, extra clusters match nothing and count
    as wrong. A cluster id such as ``-1`` (noise) is treated like any other cluster.
    """
    y, a = _check_pair(labels, assignments)
    return _hungarian(y, a)


def clustering_scores(labels: ArrayLike, assignments: ArrayLike) -> dict[str, float]:
    """``{"nmi", "ami", "acc"}`` of cluster ``assignments`` against ground-truth ``labels``.

    NMI and AMI are scikit-learn's ``normalized_mutual_info_score`` and
    ``adjusted_mutual_info_score`` (``average_method="arithmetic"``); ``acc`` is
    :func:`hungarian_accuracy`. Inputs: 1-D numpy arrays or torch tensors of equal,
    non-zero length. Note that sklearn's AMI gets slow for many clusters x classes on large n.
    """
    y, a = _check_pair(labels, assignments)
    return {
        "nmi": float(normalized_mutual_info_score(y, a, average_method="arithmetic")),
        "ami": float(adjusted_mutual_info_score(y, a, average_method="arithmetic")),
        "acc": _hungarian(y, a),
    }
