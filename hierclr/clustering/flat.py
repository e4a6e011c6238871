"""PCL v2's E-step: independent flat K-means at several granularities (the baseline HCSC builds on).

PCL clusters the same features once per ``K`` in ``num_clusters`` (e.g. 25k, 50k, 100k), each
clustering on its own, with the concentration phi of HCSC Eq. 3 (PCL's "density", the same formula:
:func:`~hierclr.clustering.concentration.concentration_from_distances`) and L2-normalised centroids.
The result is packed into a :class:`~hierclr.clustering.Prototypes` with one "level" per clustering,
so the same object travels through the service, the checkpoints and ProtoNCE.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from hierclr.clustering.concentration import concentration_from_distances
from hierclr.clustering.hierarchical import prepare_features
from hierclr.clustering.kmeans import KMeansResult, kmeans
from hierclr.clustering.prototypes import Prototypes
from hierclr.clustering.settings import KMeansSettings

log = logging.getLogger(__name__)


def validate_num_clusters(num_clusters: Sequence[int]) -> tuple[int, ...]:
    """Cluster counts of the flat clusterings: at least one, positive integers, any order."""
    ks = tuple(num_clusters)
    if not ks:
        raise ValueError("num_clusters must name at least one clustering, got []")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"num_clusters must be positive integers, got {list(ks)}")
    return tuple(int(k) for k in ks)


def flat_multi_kmeans(
    features,
    num_clusters: Sequence[int],
    settings: KMeansSettings,
    *,
    epoch: int | None = None,
    verbose: bool = False,
) -> Prototypes:
    """PCL's multi-granularity clustering of ``features`` (``(N, d)``, row i = dataset id i).

    Clustering ``i`` is an independent K-means into ``num_clusters[i]`` clusters with seed
    ``settings.seed + i`` (the sizes need not decrease); its phi follows Eq. 3 on the images;
    ``assignments[:, i]`` is straight from clustering ``i`` (not composed). See :func:`flat_prototypes`
    for ``parents``. ``settings.min_cluster_size`` is not used (PCL drops no cluster).
    """
    ks = validate_num_clusters(num_clusters)
    x = prepare_features(features, settings.backend, settings.device)
    if x.shape[0] < max(ks):
        raise ValueError(f"fewer points ({x.shape[0]}) than clusters ({max(ks)}) in num_clusters {list(ks)}")
    results = [
        kmeans(x, k, settings.model_copy(update={"seed": settings.seed + i}), verbose=verbose)
        for i, k in enumerate(ks)
    ]
    protos = flat_prototypes(results, settings, epoch=epoch)
    return protos.to(settings.device) if settings.device is not None else protos


def flat_prototypes(
    results: Sequence[KMeansResult], settings: KMeansSettings, *, epoch: int | None = None
) -> Prototypes:
    """:class:`Prototypes` from finished flat clusterings of the same rows (one level each), phi (Eq. 3)
    with ``settings.temperature`` and ``settings.smooth``.

    ``parents[l]`` is required by :class:`Prototypes` (a level-``l`` -> level-``l+1`` map) but PCL has
    no tree and does not use it: it is filled with the majority vote (:func:`majority_parents`),
    which is informative for analysis only.
    """
    if not results:
        raise ValueError("flat_prototypes: no clusterings given")
    n = results[0].assignments.shape[0]
    if any(r.assignments.shape != (n,) for r in results):
        raise ValueError(f"flat_prototypes: clusterings disagree on the number of rows: "
                         f"{[r.assignments.shape[0] for r in results]}")
    centroids, phis, cols = [], [], []
    for r in results:
        k = r.centroids.shape[0]
        phis.append(
            concentration_from_distances(
                np.sqrt(r.sq_distances), r.assignments, k, temperature=settings.temperature, smooth=settings.smooth,
            )
        )
        norms = np.linalg.norm(r.centroids, axis=1, keepdims=True)
        centroids.append(torch.from_numpy((r.centroids / np.maximum(norms, 1e-12)).astype(np.float32)))
        cols.append(np.asarray(r.assignments, np.int64))
    parents = [
        majority_parents(cols[lvl], cols[lvl + 1], centroids[lvl].shape[0]) for lvl in range(len(results) - 1)
    ]
    return Prototypes(
        centroids=centroids,
        parents=parents,
        phi=phis,
        assignments=torch.from_numpy(np.stack(cols, axis=1)),
        epoch=epoch,
    )


def majority_parents(child: np.ndarray, parent: np.ndarray, num_child: int) -> Tensor:
    """For each child cluster, the parent cluster holding most of its members.

    ``child``/``parent``: ``(N,)`` labels of the same rows in two clusterings. Ties go to the smallest
    parent id; a child cluster without members gets parent 0. Counts only the (child, parent) pairs
    that occur, so it stays cheap for 100k x 100k clusterings.
    """
    child = np.asarray(child, np.int64)
    parent = np.asarray(parent, np.int64)
    out = np.zeros(num_child, np.int64)
    if child.size == 0:
        return torch.from_numpy(out)
    width = int(parent.max()) + 1
    keys, counts = np.unique(child * width + parent, return_counts=True)
    kid, par = keys // width, keys % width
    # order by child, then count descending, then parent ascending; the first row per child wins
    order = np.lexsort((par, -counts, kid))
    kid, par = kid[order], par[order]
    first = np.ones(kid.shape[0], bool)
    first[1:] = kid[1:] != kid[:-1]
    out[kid[first]] = par[first]
    return torch.from_numpy(out)
