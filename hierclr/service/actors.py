"""The K-means actors: each holds some ranks' feature shards and clusters them, alone or as one shard of a
distributed Lloyd K-means (:class:`ActorShards`); :class:`ClusteringJob` is what every actor needs to know."""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import ray
import torch
from torch import Tensor

from hierclr.clustering.distributed import PartialSums, expand_to_ids
from hierclr.clustering.flat import flat_multi_kmeans, flat_prototypes
from hierclr.clustering.hierarchical import build_hierarchy, hierarchical_kmeans
from hierclr.clustering.kmeans import KMeansResult, lloyd_partial_sums, nearest_centroid, non_faiss_reason
from hierclr.clustering.prototypes import Prototypes
from hierclr.config.clustering import ClusteringConfig
from hierclr.runtime.faults import trigger
from hierclr.service.stats import LevelStats, level_stats

ClusteringMethod = Literal["hcsc", "pcl"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusteringJob:
    """What to cluster, as every K-means actor needs it."""

    clustering: ClusteringConfig
    method: ClusteringMethod
    pcl_sizes: tuple[int, ...]
    num_rows: int
    compat: Literal["official", "paper"] = "official"
    num_expected: int | None = None  # ids submitted per E-step (data.fraction: fewer than num_rows); None: num_rows


def warn_if_not_official(job: ClusteringJob, settings: ClusteringConfig, *, distributed: bool) -> str | None:
    """``compat: official`` promises the official code's K-means (faiss): warn, once per call, when these
    settings will run something else; returns the warning's text (``None``: no warning)."""
    reason = non_faiss_reason(settings, distributed=distributed) if job.compat == "official" else None
    if reason is None:
        return None
    text = (f"compat: official, but {reason}: the prototypes are not faiss's (empty-cluster splits, seeding and "
            "subsampling differ); set clustering.backend=faiss and service.num_actors=1 for the official E-step")
    warnings.warn(text, UserWarning, stacklevel=2)
    log.warning(text)
    return text


@dataclass(frozen=True)
class ActorSpec:
    """How the pool's K-means actors are made, so that the coordinator can make a new one in place of an actor
    that used up its restarts: name prefix, Ray resources, restarts, torch threads, and whether they share the
    training workers' GPUs (then the coordinator starts them, on the workers' nodes, at the first E-step)."""

    name: str
    resources: dict
    max_restarts: int
    num_threads: int
    on_worker_gpus: bool = False
    ready_timeout_s: float = 120.0


def kmeans_actor_options(spec: ActorSpec, index: int, generation: int = 0, node_id: str | None = None) -> dict:
    """Ray options of K-means actor ``index`` (``generation`` > 0: a replacement, named apart from the dead one).

    ``node_id``: pinned to that node (a training worker's, with ``on_worker_gpus``). Started after the workers
    hold their GPUs, a fractional ``num_gpus`` then lands in what a worker left of its GPU: Ray gives a
    fractional request the fitting GPU with the least free capacity. Started before them it would not: eight
    0.1-GPU actors all go to GPU 0, and the eighth 0.9-GPU worker then waits forever
    (``tests/ray/service/test_gpu_placement.py``)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from hierclr.runtime.ray_start import OWN_RESOURCES

    name = f"{spec.name}-kmeans-{index}" + (f"-r{generation}" if generation else "")
    where = NodeAffinitySchedulingStrategy(node_id, soft=False) if node_id else OWN_RESOURCES
    return {"max_restarts": spec.max_restarts, "name": name, **spec.resources, "scheduling_strategy": where}


def spawn_kmeans_actor(spec: ActorSpec, index: int, generation: int = 0, node_id: str | None = None):
    """Start K-means actor ``index`` with :func:`kmeans_actor_options`."""
    opts = kmeans_actor_options(spec, index, generation, node_id)
    return ray.remote(KMeansActor).options(**opts).remote(index, spec.num_threads)


class KMeansActor:
    """One member of the pool: holds a subset of the epoch's feature shards (on its GPU when it has one).

    Made remote by :meth:`~hierclr.service.pool.ClusteringService.start`. Rows are addressed by *global position* (rank of
    the row's id among all clustered ids), which the coordinator sends after :meth:`load`.
    """

    def __init__(self, index: int, num_threads: int) -> None:
        torch.set_num_threads(max(1, num_threads))
        self.index = index
        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.release()
        self._backend_checked = False

    # -- housekeeping
    def ping(self) -> int:
        return os.getpid()

    def _fault_point(self, method: str, **where) -> None:
        trigger("kmeans_actor", actor=self.index, method=method, **where)  # tests' fault plan (runtime.faults)

    def release(self) -> None:
        """Forget the epoch's rows (called after every E-step so features do not stay in memory)."""
        self._ids = np.zeros(0, np.int64)
        self._x = torch.zeros(0, 0)
        self._positions = np.zeros(0, np.int64)
        self._by_position = np.zeros(0, np.int64)
        self._subset_rows: Tensor | None = None

    # -- data
    def load(self, shard_refs: list) -> tuple[list[np.ndarray], list[int]]:
        """Fetch this actor's ``(ids, features)`` shards from the object store (owned by the workers).
        Returns each shard's ids and feature dimension, for the coordinator's checks (when the
        dimensions disagree nothing is kept: the coordinator raises)."""
        self._fault_point("load")
        self.release()
        shards = ray.get(list(shard_refs))
        ids = [np.array(i, np.int64) for i, _ in shards]  # copies
        dims = [int(f.shape[1]) for _, f in shards]
        if len(set(dims)) == 1:
            self._ids = np.concatenate(ids)
            self._x = torch.from_numpy(np.concatenate([np.asarray(f, np.float32) for _, f in shards])).to(self.device)
        del shards  # drop the zero-copy views: the workers' objects need not stay pinned here
        return ids, dims

    def set_positions(self, positions: np.ndarray) -> None:
        self._positions = np.asarray(positions, np.int64)
        self._by_position = np.argsort(self._positions)

    # -- the FeatureShards protocol, one shard per actor
    def set_subset(self, subset: np.ndarray | None) -> None:
        if subset is None:
            self._subset_rows = None
            return
        member = np.isin(self._positions, np.asarray(subset, np.int64))
        self._subset_rows = torch.from_numpy(np.nonzero(member)[0]).to(self.device)

    def gather(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices into positions that this actor holds, their rows)``."""
        positions = np.asarray(positions, np.int64)
        sorted_pos = self._positions[self._by_position]
        loc = np.clip(np.searchsorted(sorted_pos, positions), 0, max(sorted_pos.shape[0] - 1, 0))
        hit = sorted_pos[loc] == positions if sorted_pos.size else np.zeros(positions.shape, bool)
        rows = torch.from_numpy(self._by_position[loc[hit]]).to(self.device)
        return np.nonzero(hit)[0], self._x[rows].cpu().numpy()

    def partial_sums(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        self._fault_point("partial_sums")
        x = self._x if self._subset_rows is None else self._x[self._subset_rows]
        sums, counts, obj = lloyd_partial_sums(x, torch.from_numpy(centroids).to(self.device))
        return sums.cpu().numpy(), counts.cpu().numpy(), float(obj)

    def assign(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each of this actor's rows, in its own row order."""
        self._fault_point("assign")
        d2, idx = nearest_centroid(self._x, torch.from_numpy(centroids).to(self.device))
        return d2.cpu().numpy(), idx.cpu().numpy()

    # -- whole E-steps
    @ray.method(num_returns=2)
    def cluster(self, job: ClusteringJob, epoch: int) -> tuple[Prototypes, tuple[LevelStats, ...]]:
        """Single-actor E-step over every row this actor holds (all of them)."""
        self._fault_point("cluster", epoch=epoch)
        order = np.argsort(self._positions)
        x, ids = self._x[torch.from_numpy(order).to(self.device)], self._ids[order]
        settings = self._settings(job, distributed=False)
        if job.method == "pcl":
            protos = flat_multi_kmeans(x, job.pcl_sizes, settings, epoch=epoch)
        else:
            protos = hierarchical_kmeans(x, job.clustering.sizes, settings, epoch=epoch)
        return self._finish(protos, ids, job.num_rows)

    @ray.method(num_returns=2)
    def build(
        self, job: ClusteringJob, level0: Sequence[KMeansResult], ids: np.ndarray, epoch: int
    ) -> tuple[Prototypes, tuple[LevelStats, ...]]:
        """Prototypes from distributed level-0 results: the tree above (hcsc) or the flat pack (pcl)."""
        self._fault_point("build", epoch=epoch)
        if job.method == "pcl":
            self._settings(job, distributed=True)  # the warning only: flat prototypes need no more K-means
            protos = flat_prototypes(level0, job.clustering, epoch=epoch)
        else:
            protos = build_hierarchy(level0[0], job.clustering.sizes, self._settings(job, distributed=True),
                                     epoch=epoch)
        return self._finish(protos, ids, job.num_rows)

    def _settings(self, job: ClusteringJob, *, distributed: bool) -> ClusteringConfig:
        """The job's clustering settings, whole, on this actor's device; the first call warns when ``compat:
        official`` will not get faiss's K-means."""
        settings = job.clustering.model_copy(update={"device": str(self.device)})
        if not self._backend_checked:
            self._backend_checked = True
            warn_if_not_official(job, settings, distributed=distributed)
        return settings

    def _finish(self, protos: Prototypes, ids: np.ndarray, num_rows: int):
        protos = expand_to_ids(protos.to("cpu"), ids, num_rows)  # CPU: any worker can deserialize it
        return protos, level_stats(protos)


class ActorShards:
    """:class:`~hierclr.clustering.distributed.FeatureShards` over K-means actors (one shard each)."""

    def __init__(self, actors: list, positions: list[np.ndarray], dim: int) -> None:
        self._actors = actors
        self._positions = positions
        self._dim = dim
        self._n = int(sum(p.shape[0] for p in positions))
        self._subset_key: object = object()

    @property
    def num_rows(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._dim

    def gather_rows(self, positions: np.ndarray) -> Tensor:
        positions = np.asarray(positions, np.int64)
        out = np.zeros((positions.shape[0], self._dim), np.float32)
        filled = 0
        for hit, rows in ray.get([a.gather.remote(positions) for a in self._actors]):
            out[hit] = rows
            filled += hit.shape[0]
        if filled != positions.shape[0]:
            raise RuntimeError(f"gather_rows: the actors hold {filled} of {positions.shape[0]} requested rows")
        return torch.from_numpy(out)

    def partial_sums(self, centroids: Tensor, subset: np.ndarray | None) -> list[PartialSums]:
        if subset is not self._subset_key:  # ship the training subsample once per K-means, not per iteration
            ref = ray.put(subset) if subset is not None else None
            ray.get([a.set_subset.remote(ref) for a in self._actors])
            self._subset_key = subset
        c = centroids.detach().cpu().numpy()
        parts = ray.get([a.partial_sums.remote(c) for a in self._actors])
        # torch.tensor copies: arrays from ray.get are read-only views of the object store
        return [(torch.tensor(s), torch.tensor(n), torch.tensor(o, dtype=torch.float64)) for s, n, o in parts]

    def assign(self, centroids: Tensor) -> tuple[Tensor, Tensor]:
        c = centroids.detach().cpu().numpy()
        d2 = np.empty(self._n, np.float32)
        idx = np.empty(self._n, np.int64)
        for pos, (ad2, aidx) in zip(self._positions, ray.get([a.assign.remote(c) for a in self._actors])):
            d2[pos], idx[pos] = ad2, aidx
        return torch.from_numpy(d2), torch.from_numpy(idx)
