"""Distributed Lloyd K-means over feature shards (ARCHITECTURE "clustering service"), no Ray here.

The E-step's level 0 (spec "E-step" step 2) over features that live in several places (the clustering
service's actors, or plain in-process shards in tests): every Lloyd iteration each shard assigns its
rows and returns per-centroid sums and counts (:func:`~hierclr.clustering.kmeans.lloyd_partial_sums`);
their total goes through :func:`~hierclr.clustering.kmeans.update_centroids`. The driver runs *exactly*
the torch backend's algorithm (:func:`~hierclr.clustering.kmeans._kmeans_torch`): the same seeded
``torch.Generator`` draws the same training subsample and the same random initial centroids, the same
empty-cluster split, the best of ``nredo`` runs by objective and a final search of every row. So with the
same inputs and :class:`~hierclr.clustering.settings.KMeansSettings` it equals
``kmeans(x_sorted_by_id, k, settings)`` with ``backend="torch"`` up to the order of floating-point sums.

Row order: the *global position* of a row is its rank among all rows sorted by dataset id, i.e. row
``p`` of ``x_sorted_by_id``. Shards address rows by global position.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from hierclr.clustering.arrays import as_numpy
from hierclr.clustering.hierarchical import build_hierarchy, drop_small_clusters, validate_sizes
from hierclr.clustering.kmeans import KMeansResult, lloyd_partial_sums, nearest_centroid, update_centroids
from hierclr.clustering.prototypes import Prototypes
from hierclr.clustering.settings import KMeansSettings

log = logging.getLogger(__name__)

PartialSums = tuple[Tensor, Tensor, Tensor]  # sums (k, d) float64, counts (k,) float64, objective () float64


class FeatureShards(Protocol):
    """Feature rows spread over shards, addressed by global position (rows sorted by dataset id)."""

    @property
    def num_rows(self) -> int:
        """Total number of rows N over all shards."""
        ...

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        ...

    def gather_rows(self, positions: np.ndarray) -> Tensor:
        """``(len(positions), d)`` float32 CPU rows at the given global positions, in that order."""
        ...

    def partial_sums(self, centroids: Tensor, subset: np.ndarray | None) -> list[PartialSums]:
        """One Lloyd assignment per shard over its rows in ``subset`` (global positions; None: all rows)."""
        ...

    def assign(self, centroids: Tensor) -> tuple[Tensor, Tensor]:
        """``(sq_distances (N,), assignments (N,))`` of every row to its nearest centroid, global order, CPU."""
        ...


def distributed_kmeans(
    shards: FeatureShards,
    k: int,
    settings: KMeansSettings,
    *,
    init_centroids=None,
    verbose: bool = False,
) -> KMeansResult:
    """K-means of the rows of ``shards`` into ``k`` clusters by distributed Lloyd iterations.

    Same algorithm, random draws and result as ``kmeans(x_sorted_by_id, k, settings)`` with
    ``backend="torch"`` (see the module docstring; ``settings.backend``/``device`` are not used: each
    shard computes where its rows live); centroids are updated on the CPU in float64 from the summed
    shard statistics. ``init_centroids`` (``(k, d)``) replaces the random start (then ``nredo`` must be 1).
    """
    niter, nredo, seed = settings.niter, settings.nredo, settings.seed
    max_points_per_centroid = settings.max_points_per_centroid
    if k < 1:
        raise ValueError(f"distributed_kmeans: k must be >= 1, got {k}")
    n, d = int(shards.num_rows), int(shards.dim)
    if n < k:
        raise ValueError(f"distributed_kmeans: fewer points ({n}) than clusters ({k})")
    if init_centroids is not None and nredo != 1:
        raise ValueError("distributed_kmeans: init_centroids given, so nredo must be 1 (every redo would start the same)")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    subset: np.ndarray | None = None
    n_train = n
    if n > k * max_points_per_centroid:  # the same subsample as the single-process torch backend
        subset = torch.randperm(n, generator=gen)[: k * max_points_per_centroid].numpy()
        n_train = subset.shape[0]
    best_c, best_obj = None, float("inf")
    for redo in range(nredo):
        if init_centroids is not None:
            c = torch.from_numpy(as_numpy(init_centroids, np.float32, "init_centroids"))
            if c.shape != (k, d):
                raise ValueError(f"distributed_kmeans: init_centroids shape {tuple(c.shape)}, expected {(k, d)}")
        else:
            perm = torch.randperm(n_train, generator=gen)[:k].numpy()
            c = shards.gather_rows(subset[perm] if subset is not None else perm).to("cpu", torch.float32).clone()
        obj = float("inf")
        for it in range(niter):
            sums, counts, obj_t = reduce_partial_sums(shards.partial_sums(c, subset), k, d)
            obj = float(obj_t)
            c, nsplit = update_centroids(sums, counts, c)
            if verbose:
                log.info("distributed kmeans redo %d iter %d obj %.4f splits %d", redo, it, obj, nsplit)
        if obj < best_obj:
            best_c, best_obj = c, obj
    d2, idx = shards.assign(best_c)
    return KMeansResult(
        best_c.numpy(), idx.cpu().numpy().astype(np.int64), d2.cpu().numpy().astype(np.float32), best_obj,
        "torch-distributed",
    )


def reduce_partial_sums(parts: Sequence[PartialSums], k: int, d: int) -> PartialSums:
    """Total of the shards' ``(sums, counts, objective)`` on the CPU in float64 (empty shards allowed)."""
    sums = torch.zeros(k, d, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    obj = torch.zeros((), dtype=torch.float64)
    for s, c, o in parts:
        sums += torch.as_tensor(s, dtype=torch.float64).cpu()
        counts += torch.as_tensor(c, dtype=torch.float64).cpu()
        obj += torch.as_tensor(o, dtype=torch.float64).cpu()
    return sums, counts, obj


def distributed_level0(
    shards: FeatureShards, k: int, settings: KMeansSettings, *, verbose: bool = False
) -> KMeansResult:
    """Level 0 of the E-step over shards: :func:`distributed_kmeans` with seed ``settings.seed + 0``, then
    the paper's ``min_cluster_size`` drop (survivors re-searched through the shards), as
    :func:`~hierclr.clustering.hierarchical.level0_kmeans` does for one process."""
    res = distributed_kmeans(shards, k, settings, verbose=verbose)
    min_cluster_size = settings.min_cluster_size
    if min_cluster_size > 0:
        def reassign(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            d2, idx = shards.assign(torch.from_numpy(np.ascontiguousarray(c, np.float32)))
            return d2.cpu().numpy(), idx.cpu().numpy()

        res = drop_small_clusters(res, min_cluster_size, reassign)
    return res


def distributed_hierarchical_kmeans(
    shards: FeatureShards,
    sizes: Sequence[int],
    settings: KMeansSettings,
    *,
    epoch: int | None = None,
    verbose: bool = False,
) -> Prototypes:
    """:func:`~hierclr.clustering.hierarchical_kmeans` with a distributed level 0; ``settings.backend`` is
    used for the (small) levels above. Assignments are in global order (rows sorted by dataset id)."""
    sizes = validate_sizes(sizes)
    level0 = distributed_level0(shards, sizes[0], settings, verbose=verbose)
    return build_hierarchy(level0, sizes, settings, epoch=epoch, verbose=verbose)


def expand_to_ids(prototypes: Prototypes, ids, num_rows: int) -> Prototypes:
    """Prototypes whose assignment row i is dataset id i, for ``num_rows`` ids.

    ``prototypes`` were computed on the present rows only, row j = ``ids[j]`` (``ids`` sorted,
    unique). Ids that were not clustered (e.g. images the embed stream could not decode) get
    assignment ``-1`` at every level: they have no prototype this epoch.
    """
    ids_t = torch.as_tensor(as_numpy(ids, np.int64, "ids"))
    if ids_t.shape != (prototypes.num_samples,):
        raise ValueError(f"expand_to_ids: {tuple(ids_t.shape)} ids for {prototypes.num_samples} clustered rows")
    if ids_t.numel() and (int(ids_t.min()) < 0 or int(ids_t.max()) >= num_rows):
        raise ValueError(f"expand_to_ids: ids must lie in [0, {num_rows}), got [{int(ids_t.min())}, {int(ids_t.max())}]")
    if ids_t.numel() > 1 and not bool((ids_t[1:] > ids_t[:-1]).all()):
        raise ValueError("expand_to_ids: ids must be sorted and unique (row j of the prototypes is ids[j])")
    if ids_t.numel() == num_rows:  # sorted, unique and in range: ids == arange(num_rows), nothing is missing
        return prototypes
    full = torch.full((num_rows, prototypes.num_levels), -1, dtype=torch.long, device=prototypes.assignments.device)
    full[ids_t.to(full.device)] = prototypes.assignments
    return Prototypes(
        centroids=prototypes.centroids, parents=prototypes.parents, phi=prototypes.phi, assignments=full,
        epoch=prototypes.epoch,
    )


class LocalShards:
    """:class:`FeatureShards` over in-process ``(ids, features)`` pairs (tests, and one-process use).

    ``shards``: per shard, ``ids (n_i,)`` int and ``features (n_i, d)`` float; ids must be unique over
    all shards. Features are kept as float32 tensors on ``device`` (CPU when None).
    """

    def __init__(self, shards: Sequence[tuple], device: torch.device | str | None = None) -> None:
        if not shards:
            raise ValueError("LocalShards: no shards given")
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        ids, feats = [], []
        for i, (sid, sx) in enumerate(shards):
            sid = as_numpy(sid, np.int64, f"ids of shard {i}")
            sx = as_numpy(sx, np.float32, f"features of shard {i}")
            if sid.ndim != 1 or sx.ndim != 2 or sx.shape[0] != sid.shape[0]:
                raise ValueError(f"LocalShards: shard {i} has ids {sid.shape} and features {sx.shape}; need (n,), (n, d)")
            ids.append(sid)
            feats.append(torch.from_numpy(sx).to(self._device))
        dims = {f.shape[1] for f in feats}
        if len(dims) != 1:
            raise ValueError(f"LocalShards: shards disagree on the feature dimension: {sorted(dims)}")
        self._dim = dims.pop()
        self._feats = feats
        all_ids = np.concatenate(ids)
        self.ids = np.sort(all_ids)  # global order
        dup = self.ids[1:][self.ids[1:] == self.ids[:-1]]
        if dup.size:
            raise ValueError(f"LocalShards: {dup.size} duplicate ids across shards, e.g. {np.unique(dup)[:5].tolist()}")
        self._positions = [np.searchsorted(self.ids, sid) for sid in ids]  # global position of each shard row
        n = all_ids.shape[0]
        self._owner = np.empty(n, np.int64)  # global position -> shard
        self._local = np.empty(n, np.int64)  # global position -> row within its shard
        for s, pos in enumerate(self._positions):
            self._owner[pos] = s
            self._local[pos] = np.arange(pos.shape[0])
        self._subset_key: np.ndarray | None = None
        self._subset_rows: list[Tensor] = []

    @property
    def num_rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self._dim)

    def gather_rows(self, positions: np.ndarray) -> Tensor:
        positions = np.asarray(positions, np.int64)
        out = torch.empty(positions.shape[0], self._dim, dtype=torch.float32)
        owner = self._owner[positions]
        for s, x in enumerate(self._feats):
            sel = np.nonzero(owner == s)[0]
            if sel.size:
                out[torch.from_numpy(sel)] = x[torch.from_numpy(self._local[positions[sel]]).to(x.device)].cpu()
        return out

    def partial_sums(self, centroids: Tensor, subset: np.ndarray | None) -> list[PartialSums]:
        c = centroids.to(self._device, torch.float32)
        if subset is None:
            return [lloyd_partial_sums(x, c) for x in self._feats]
        if subset is not self._subset_key:  # the same subsample every iteration: select its rows once
            member = np.zeros(self.num_rows, bool)
            member[np.asarray(subset, np.int64)] = True
            self._subset_rows = [torch.from_numpy(np.nonzero(member[pos])[0]) for pos in self._positions]
            self._subset_key = subset
        return [lloyd_partial_sums(x[rows.to(x.device)], c) for x, rows in zip(self._feats, self._subset_rows)]

    def assign(self, centroids: Tensor) -> tuple[Tensor, Tensor]:
        c = centroids.to(self._device, torch.float32)
        d2 = torch.empty(self.num_rows, dtype=torch.float32)
        idx = torch.empty(self.num_rows, dtype=torch.long)
        for x, pos in zip(self._feats, self._positions):
            sd2, sidx = nearest_centroid(x, c)
            d2[torch.from_numpy(pos)] = sd2.cpu()
            idx[torch.from_numpy(pos)] = sidx.cpu()
        return d2, idx
