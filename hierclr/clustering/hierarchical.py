"""Hierarchical K-means (HCSC Alg. 1) producing the epoch's :class:`Prototypes`."""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from hierclr.clustering.arrays import as_numpy
from hierclr.clustering.concentration import concentration_from_distances
from hierclr.clustering.kmeans import KMeansResult, assign, kmeans, resolve_backend
from hierclr.clustering.prototypes import Prototypes, compose_assignments
from hierclr.clustering.settings import DEFAULTS, Backend, KMeansSettings

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
    settings: KMeansSettings = DEFAULTS,
    *,
    epoch: int | None = None,
    verbose: bool = False,
) -> Prototypes:
    """Cluster ``features`` (``(N, d)``, row i = dataset id i) into a tree of prototypes.

    Per the HCSC reference code (spec "E-step"): level 0 is K-means of the features; level
    ``l > 0`` is K-means of the L2-normalised centroids of level ``l - 1`` (unweighted), and
    ``parents[l-1]`` maps each level-``(l-1)`` prototype to its level-``l`` cluster. Image
    assignments above level 0 are composed through the tree. Level ``l`` uses seed ``settings.seed + l``
    (``seed=0`` is the official ``seed = level index``). phi per level follows Eq. 3
    (:func:`~hierclr.clustering.concentration.concentration`), with members = images at level 0
    and child centroids above, distances measured to the un-normalised centroids.

    ``settings.min_cluster_size > 0`` is the paper's option (Sec. 5.1: "clusters with less than 10
    samples are discarded"): level-0 clusters with fewer images are *dropped* and their images reassigned
    to the nearest surviving centroid, so level 0 may end with fewer prototypes than requested. Higher
    levels contain whole level-0 clusters, so they meet the minimum (in images) automatically.
    The official code does not do this (default 0).

    ``settings.device``/``backend``: see :func:`~hierclr.clustering.kmeans.resolve_backend`. The returned
    prototypes live on ``settings.device`` (CPU when ``None``).

    The two steps are also public: :func:`level0_kmeans` (K-means of the images) and
    :func:`build_hierarchy` (everything above it), so that a distributed level 0
    (:mod:`hierclr.clustering.distributed`) can share the rest.
    """
    sizes = validate_sizes(sizes)
    x = prepare_features(features, settings.backend, settings.device)
    if x.shape[0] < sizes[0]:
        raise ValueError(f"fewer points ({x.shape[0]}) than clusters at level 0 ({sizes[0]})")
    level0 = level0_kmeans(x, sizes[0], settings, verbose=verbose)
    return build_hierarchy(level0, sizes, settings, epoch=epoch, verbose=verbose)


def prepare_features(features, backend: Backend, device: torch.device | str | None):
    """Checked ``(N, d)`` features: a torch tensor left on its device for the torch backend, else numpy."""
    if isinstance(features, torch.Tensor) and resolve_backend(backend, device)[0] == "torch":
        x = features.detach()  # stays on its device: no GPU -> CPU -> GPU round trip
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or inf values")
    else:
        x = as_numpy(features, np.float32, "features")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"features must be a 2-D (N, d) array, got shape {tuple(x.shape)}")
    return x


def level0_kmeans(x, k: int, settings: KMeansSettings, *, verbose: bool = False) -> KMeansResult:
    """Level 0 of the E-step (spec step 2): K-means of the images with seed ``settings.seed + 0``, then
    the paper's optional ``min_cluster_size`` drop (see :func:`drop_small_clusters`)."""
    res = kmeans(x, k, settings, verbose=verbose)
    if settings.min_cluster_size > 0:
        res = drop_small_clusters(
            res, settings.min_cluster_size,
            lambda c: assign(x, c, backend=settings.backend, device=settings.device),
        )
    return res


def drop_small_clusters(
    res: KMeansResult, min_size: int, reassign: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> KMeansResult:
    """Remove clusters with fewer than ``min_size`` points; their points go to the nearest survivor.

    ``reassign(centroids) -> (sq_distances, assignments)`` searches every point against the surviving
    centroids (a local :func:`~hierclr.clustering.kmeans.assign`, or the shards' assign when distributed).
    """
    counts = np.bincount(res.assignments, minlength=res.centroids.shape[0])
    keep = counts >= min_size
    if not keep.any():
        raise ValueError(
            f"min_cluster_size={min_size}: every level-0 cluster is smaller (largest has {counts.max()} points)"
        )
    if keep.all():
        return res
    log.warning(
        "min_cluster_size=%d: dropped %d of %d level-0 clusters; their %d points were reassigned "
        "to the nearest surviving centroid", min_size, int((~keep).sum()), res.centroids.shape[0],
        int(counts[~keep].sum()),
    )
    cent = res.centroids[keep]
    d2, idx = reassign(cent)
    return replace(res, centroids=cent, assignments=np.asarray(idx, np.int64), sq_distances=np.asarray(d2, np.float32))


def build_hierarchy(
    level0: KMeansResult,
    sizes: Sequence[int],
    settings: KMeansSettings,
    *,
    epoch: int | None = None,
    verbose: bool = False,
) -> Prototypes:
    """The prototypes from a finished level 0 (spec E-step 3-5): phi of level 0 from the images'
    distances, levels ``1..L-1`` by K-means of the normalised centroids below (seed ``settings.seed + l``),
    parents, and assignments composed through the tree.

    ``level0`` is the (possibly small-cluster-dropped) K-means of the images; ``sizes`` are all the
    level sizes, ``sizes[0]`` included (only ``sizes[1:]`` are clustered here). ``min_cluster_size``
    only shapes the error message when the drop left too few level-0 prototypes.
    """
    sizes = validate_sizes(sizes)
    cent, idx, d2 = level0.centroids, level0.assignments, level0.sq_distances
    temperature, smooth, device = settings.temperature, settings.smooth, settings.device
    phis = [concentration_from_distances(np.sqrt(d2), idx, cent.shape[0], temperature=temperature, smooth=smooth)]
    points = _l2_normalize(cent)
    centroids, parents = [torch.from_numpy(points)], []
    if verbose:
        log.info("level 0: %d prototypes, objective %.4f (%s)", cent.shape[0], level0.objective, level0.backend)
    for level, k in enumerate(sizes[1:], start=1):
        if points.shape[0] < k:
            raise ValueError(
                f"level {level}: fewer points ({points.shape[0]} level-{level - 1} prototypes) than clusters ({k}); "
                f"choose smaller sizes{' or a smaller min_cluster_size' if settings.min_cluster_size else ''}"
            )
        # faiss only *warns* below min_points_per_centroid; upper levels always are (3000 -> 2000), so
        # warn at level 0 only.
        level_settings = settings.model_copy(update={"seed": settings.seed + level, "min_points_per_centroid": 1})
        res = kmeans(points, k, level_settings, verbose=verbose)
        phis.append(
            concentration_from_distances(
                np.sqrt(res.sq_distances), res.assignments, res.centroids.shape[0],
                temperature=temperature, smooth=smooth,
            )
        )
        points = _l2_normalize(res.centroids)
        centroids.append(torch.from_numpy(points))
        parents.append(torch.from_numpy(res.assignments))
        if verbose:
            log.info("level %d: %d prototypes, objective %.4f (%s)", level, k, res.objective, res.backend)

    protos = Prototypes(
        centroids=centroids,
        parents=parents,
        phi=phis,
        assignments=compose_assignments(torch.from_numpy(np.asarray(idx, np.int64)), parents),
        epoch=epoch,
    )
    return protos.to(device) if device is not None else protos
