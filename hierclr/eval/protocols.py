"""The feature-based evaluation protocols (spec "Evaluation protocols"), on features already extracted.

* :func:`knn_protocol`: weighted kNN (HCSC Eq. 11, T = 0.07) for several k from one neighbour search, top-1
  and top-5 per k, and the best k.
* Clustering, two protocols named for what they score (NMI / AMI / Hungarian accuracy against the labels):
  :func:`prototype_clustering_protocol`, the paper's (HCSC Table 4, App. A, following PCL): the model's own
  prototypes of a level against the labels over the training set it clustered; :func:`clustering_protocol`,
  the HIRL evaluation script's: K-means of the L2-normalised features of a split at each K.
* :func:`hierarchy_protocol`: paper Table 11: AMI between cluster assignments and every label level, from
  K-means per level (K = classes at that level) and, when given, the model's own prototype assignments.

Plain numpy / torch / faiss / scikit-learn: the Ray side (:mod:`hierclr.runtime.evaluate`) extracts the features.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from hierclr.eval.clustering_scores import clustering_scores
from hierclr.eval.hierarchy_ami import prototype_label_ami
from hierclr.eval.knn import knn_predict_from_topk, knn_topk

if TYPE_CHECKING:
    from hierclr.clustering.settings import KMeansSettings


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_protocol(train_feats, train_labels, val_feats, val_labels, *, ks: Sequence[int] = (10, 20, 100, 200),
                 temperature: float = 0.07, num_classes: int | None = None, backend: str = "torch",
                 chunk_size: int = 1024) -> dict[str, float]:
    """``knn/top1_k{k}``, ``knn/top5_k{k}`` per k (capped at the training-set size), ``knn/top1_best`` and
    ``knn/best_k``. One search for the largest k; smaller k read the prefix of the sorted neighbours."""
    ty = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    vy = torch.as_tensor(np.asarray(val_labels), dtype=torch.long)
    c = int(num_classes if num_classes is not None else max(int(ty.max()), int(vy.max())) + 1)
    kmax = min(max(ks), len(ty))
    sims, labels = knn_topk(train_feats, ty, val_feats, kmax, chunk_size=chunk_size, backend=backend)
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        scores = knn_predict_from_topk(sims, labels, k=min(k, kmax), num_classes=c, temperature=temperature)
        # stable sort: equal scores (e.g. classes without a vote) rank by class id, so top-5 is deterministic
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : min(5, c)].cpu()
        out[f"knn/top1_k{k}"] = float((top[:, 0] == vy).float().mean())
        out[f"knn/top5_k{k}"] = float((top == vy[:, None]).any(1).float().mean())
    best = max(sorted(set(ks)), key=lambda k: (out[f"knn/top1_k{k}"], -k))
    out["knn/top1_best"], out["knn/best_k"] = out[f"knn/top1_k{best}"], float(best)
    return out


def prototype_clustering_protocol(assignments, labels, levels: Sequence[int] | None = None) -> dict[str, float]:
    """HCSC Table 4 / App. A (as PCL): the model's prototype assignments of each level against the class labels
    of the same training rows. ``clustering/prototypes_l{l}/{nmi,ami,acc}`` and ``.../k`` (that level's number of
    prototypes: Table 4's "# Clusters"; the paper reads level 0 of 25000-10000-1000 and level 2 of 3000-2000-1000).

    ``assignments``: ``(N, L)`` (or ``(N,)``) prototype per row and level, -1 = unassigned; ``labels``: ``(N,)``,
    -1 = unlabelled; such rows are left out per level. ``levels``: which levels (default: all). AMI over every
    row (no subsample).
    """
    a = np.asarray(assignments)
    a = a[:, None] if a.ndim == 1 else a
    y = np.asarray(labels).reshape(-1)
    if a.ndim != 2 or a.shape[0] != y.shape[0]:
        raise ValueError(f"prototype clustering: assignments {a.shape} and labels {y.shape} must have the same rows")
    levels = range(a.shape[1]) if levels is None else levels
    out: dict[str, float] = {}
    for level in levels:
        if not 0 <= level < a.shape[1]:
            raise ValueError(f"prototype clustering: level {level} out of range: the prototypes have {a.shape[1]} "
                             "levels")
        keep = (a[:, level] >= 0) & (y >= 0)
        if not keep.any():
            continue
        scores = clustering_scores(y[keep], a[keep, level])
        out.update({f"clustering/prototypes_l{level}/{name}": v for name, v in scores.items()})
        out[f"clustering/prototypes_l{level}/k"] = float(a[:, level].max() + 1)
    return out


def clustering_protocol(feats, labels, ks: Sequence[int], settings: KMeansSettings) -> dict[str, float]:
    """The HIRL evaluation script's clustering: ``clustering/kmeans_k{K}/{nmi,ami,acc}`` for every K, K-means
    with ``settings`` (whole) on the L2-normalised features."""
    from hierclr.clustering.kmeans import kmeans

    x = _l2(feats)
    y = np.asarray(labels)
    out: dict[str, float] = {}
    for k in ks:
        if k > len(x):
            raise ValueError(f"clustering: K={k} exceeds the {len(x)} evaluated images")
        res = kmeans(x, int(k), settings)
        assign = np.asarray(res.assignments)
        out.update({f"clustering/kmeans_k{k}/{name}": v for name, v in clustering_scores(y, assign).items()})
    return out


def hierarchy_protocol(feats, labels_by_level: np.ndarray, *, sizes: Sequence[int] | None = None,
                       prototype_assignments: np.ndarray | None = None, seed: int = 0,
                       backend: str = "auto", max_samples: int | None = None) -> dict[str, float]:
    """AMI against every label level (paper Table 11). ``hierarchy/kmeans_label{m}``: K-means with K = the
    number of classes at level m (``sizes``, default: distinct labels per level) against level m's labels.
    ``prototype_assignments`` ``(N, Lp)`` (the model's hierarchical prototypes, rows aligned with
    ``labels_by_level``) adds :func:`prototype_label_ami`'s ``ami/...`` keys under ``hierarchy/``. K-means per
    level m: the default settings with one run (``nredo=1``) and seed ``seed + m``."""
    from hierclr.clustering.kmeans import kmeans
    from hierclr.clustering.settings import KMeansSettings

    y = np.asarray(labels_by_level)
    if y.ndim != 2:
        raise ValueError(f"labels_by_level must be (N, L), got shape {y.shape}")
    x = _l2(feats)
    if sizes is None:
        sizes = [len(np.unique(y[y[:, m] >= 0, m])) for m in range(y.shape[1])]
    assigns = []
    for m, k in enumerate(sizes):
        res = kmeans(x, int(k), KMeansSettings(nredo=1, seed=seed + m, backend=backend))
        assigns.append(np.asarray(res.assignments))
    per_level = prototype_label_ami(np.stack(assigns, 1), y, max_samples=max_samples, seed=seed)
    out = {f"hierarchy/kmeans_label{m}": per_level[f"ami/proto{m}_label{m}"] for m in range(y.shape[1])
           if f"ami/proto{m}_label{m}" in per_level}
    if prototype_assignments is not None:
        out.update({f"hierarchy/prototypes_{k.split('/', 1)[1]}": v for k, v in prototype_label_ami(
            prototype_assignments, y, max_samples=max_samples, seed=seed).items()})
    return out
