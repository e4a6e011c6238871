"""Hierarchical K-means (HCSC Alg. 1) producing the epoch's :class:`Prototypes`."""
from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import torch

from hierclr.clustering.arrays import as_numpy
from hierclr.clustering.concentration import concentration_from_distances
from hierclr.clustering.kmeans import Backend, assign, kmeans, resolve_backend
from hierclr.clustering.prototypes import Prototypes, compose_assignments

log = logging.getLogger(__name__)


def validate_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """Prototype counts per level, finest first: positive and strictly decreasing."""
    sizes = tuple(sizes)
    if not sizes:
        raise ValueError("hierarchy sizes must name at least one level, got []")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"hierarchy sizes must be positive integers, got {list(sizes)}")
    for a, b in itertools.pairwise(sizes):
        if b >= a:
            raise ValueError(
                f"hierarchy sizes must be strictly decreasing from the finest level, got {list(sizes)} "
                f"({b} after {a})"
            )
    return tuple(int(s) for s in sizes)


def _l2_normalize(c: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.maximum(norms, 1e-12)).astype(np.float32)


def hierarchical_kmeans(
    features,
    sizes: Sequence[int],
    *,
    niter: int = 20,
    nredo: int = 5,
    temperature: float = 0.2,
    smooth: float = 10.0,
    min_cluster_size: int = 0,
    seed: int = 0,
    device: torch.device | str | None = None,
    backend: Backend = "auto",
    max_points_per_centroid: int = 1000,
    min_points_per_centroid: int = 10,
    epoch: int | None = None,
    verbose: bool = False,
) -> Prototypes:
    """Cluster ``features`` (``(N, d)``, row i = dataset id i) into a tree of prototypes.

    Per the HCSC reference code (spec "E-step"): level 0 is K-means of the features; level
    ``l > 0`` is K-means of the L2-normalised centroids of level ``l - 1`` (unweighted), and
    ``parents[l-1]`` maps each level-``(l-1)`` prototype to its level-``l`` cluster. Image
    assignments above level 0 are composed through the tree. Level ``l`` uses seed ``seed + l``
    (``seed=0`` is the official ``seed = level index``). phi per level follows Eq. 3
    (:func:`~hierclr.clustering.concentration.concentration`), with members = images at level 0
    and child centroids above, distances measured to the un-normalised centroids.

    ``min_cluster_size > 0`` is the paper's option (Sec. 5.1: "clusters with less than 10 samples
    are discarded"): level-0 clusters with fewer images are *dropped* and their images reassigned to
    the nearest surviving centroid, so level 0 may end with fewer prototypes than requested. Higher
    levels contain whole level-0 clusters, so they meet the minimum (in images) automatically.
    The official code does not do this (default 0).

    ``device``/``backend``: see :func:`~hierclr.clustering.kmeans.resolve_backend`. The returned
    prototypes live on ``device`` (CPU when ``None``).
    """
    sizes = validate_sizes(sizes)
    if min_cluster_size < 0:
        raise ValueError(f"min_cluster_size must be >= 0, got {min_cluster_size}")
    if isinstance(features, torch.Tensor) and resolve_backend(backend, device)[0] == "torch":
        x = features.detach()  # stays on its device: no GPU -> CPU -> GPU round trip
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or inf values")
    else:
        x = as_numpy(features, np.float32, "features")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"features must be a 2-D (N, d) array, got shape {x.shape}")
    if x.shape[0] < sizes[0]:
        raise ValueError(f"fewer points ({x.shape[0]}) than clusters at level 0 ({sizes[0]})")

    centroids, phis, parents = [], [], []
    level0 = None
    points = x
    for level, k in enumerate(sizes):
        if points.shape[0] < k:
            raise ValueError(
                f"level {level}: fewer points ({points.shape[0]} level-{level - 1} prototypes) than clusters ({k}); "
                f"choose smaller sizes{' or a smaller min_cluster_size' if min_cluster_size else ''}"
            )
        res = kmeans(
            points, k, niter=niter, nredo=nredo, seed=seed + level,
            max_points_per_centroid=max_points_per_centroid,
            # faiss only *warns* below this; upper levels always are (3000 -> 2000), so warn at level 0 only.
            min_points_per_centroid=min_points_per_centroid if level == 0 else 1,
            backend=backend, device=device, verbose=verbose,
        )
        cent, idx, d2 = res.centroids, res.assignments, res.sq_distances
        if level == 0 and min_cluster_size > 0:
            cent, idx, d2 = _drop_small_clusters(points, cent, idx, d2, min_cluster_size, backend, device)
        phis.append(
            concentration_from_distances(np.sqrt(d2), idx, cent.shape[0], temperature=temperature, smooth=smooth)
        )
        normalized = _l2_normalize(cent)
        centroids.append(torch.from_numpy(normalized))
        if level == 0:
            level0 = torch.from_numpy(idx)
        else:
            parents.append(torch.from_numpy(idx))
        points = normalized
        if verbose:
            log.info("level %d: %d prototypes, objective %.4f (%s)", level, cent.shape[0], res.objective, res.backend)

    protos = Prototypes(
        centroids=centroids,
        parents=parents,
        phi=phis,
        assignments=compose_assignments(level0, parents),
        epoch=epoch,
    )
    return protos.to(device) if device is not None else protos


def _drop_small_clusters(points, cent, idx, d2, min_size, backend, device):
    """Remove clusters with fewer than ``min_size`` points; reassign their points to the rest."""
    counts = np.bincount(idx, minlength=cent.shape[0])
    keep = counts >= min_size
    if not keep.any():
        raise ValueError(
            f"min_cluster_size={min_size}: every level-0 cluster is smaller (largest has {counts.max()} points)"
        )
    if keep.all():
        return cent, idx, d2
    log.warning(
        "min_cluster_size=%d: dropped %d of %d level-0 clusters; their %d points were reassigned "
        "to the nearest surviving centroid", min_size, int((~keep).sum()), cent.shape[0], int(counts[~keep].sum()),
    )
    cent = cent[keep]
    d2, idx = assign(points, cent, backend=backend, device=device)
    return cent, idx, d2
