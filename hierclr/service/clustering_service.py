"""The E-step clustering service: a Ray actor pool that turns the workers' embeddings into one
:class:`~hierclr.clustering.Prototypes` per epoch (spec "E-step", ARCHITECTURE "clustering service").

Data flow (nothing large passes through the driver or the coordinator)::

    Train worker r: ray.put((ids, features)) -> [ref] --submit--> coordinator (named, threaded, 0 CPU)
    coordinator, once all world_size ranks of the epoch have submitted:
      1 K-means actor : actor ray.get()s every shard, sorts rows by id, runs hierarchical_kmeans
                        (method "hcsc") or flat_multi_kmeans ("pcl") with the ClusteringConfig settings
      n > 1 actors    : each actor ray.get()s a subset of the shards; the coordinator drives
                        distributed Lloyd K-means for level 0 (hierclr.clustering.distributed, the torch
                        algorithm: partial sums and counts per actor), a final search per actor, then
                        actor 0 builds phi, the levels above 0 and the composed assignments (small)
      -> Prototypes returned by the actor, owned by the coordinator, in the object store once
    every rank gets the same [ref] back and ray.get()s it.

The driver starts the service with :meth:`ClusteringService.start`; each worker calls
``connect(name).estep(epoch, rank, world_size, ids, features)``, which returns
``(prototypes, stats)``: the epoch's :class:`Prototypes` (``epoch`` set) and an :class:`EStepStats`
(timings, missing ids, per-level cluster sizes and phi) for the trainer to report.

Missing ids: the embed stream may skip undecodable images, so the submitted ids can be a strict subset
of ``0..num_rows-1``. Only the present rows are clustered; every absent id gets assignment ``-1`` at
every level (``stats.num_missing`` counts them). ``Prototypes`` accepts that, but the losses index
prototypes by assignment, so a batch must not contain such ids (the trainer masks them).

Fault tolerance: K-means actors restart up to ``service.max_restarts`` times. When one dies during an
E-step the coordinator retries the whole E-step once (the shard refs are still owned by the workers,
so they are simply re-sent); a second failure raises :class:`ClusteringFailedError` in every waiting
worker. A new submission round for an epoch (the Train worker group restarted) discards any unfinished
round.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from torch import Tensor

from hierclr.clustering.distributed import (
    PartialSums,
    distributed_kmeans,
    distributed_level0,
    expand_to_ids,
)
from hierclr.clustering.flat import flat_multi_kmeans, flat_prototypes, validate_num_clusters
from hierclr.clustering.hierarchical import build_hierarchy, hierarchical_kmeans
from hierclr.clustering.kmeans import KMeansResult, lloyd_partial_sums, nearest_centroid
from hierclr.clustering.prototypes import Prototypes
from hierclr.config.pretrain import ClusteringServiceSection
from hierclr.config.sections_math import ClusteringConfig
from hierclr.runtime.faults import trigger
from hierclr.runtime.ray_start import OWN_RESOURCES

log = logging.getLogger(__name__)

ClusteringMethod = Literal["hcsc", "pcl"]


class ClusteringFailedError(RuntimeError):
    """The E-step of ``epoch`` could not be computed: a K-means actor failed twice (or died for good)."""

    def __init__(self, message: str, epoch: int | None = None, actor: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.actor = actor

    def __reduce__(self):  # keep epoch/actor when Ray ships the error to the workers
        return type(self), (str(self), self.epoch, self.actor)


# ------------------------------------------------------------------------------------------------ stats
@dataclass(frozen=True)
class LevelStats:
    """Cluster sizes (in images, clustered rows only) and phi of one level."""

    num_prototypes: int
    size_min: int
    size_median: float
    size_max: int
    empty_clusters: int
    phi_min: float
    phi_mean: float
    phi_max: float


@dataclass(frozen=True)
class EStepStats:
    """What one E-step did: row counts, timings (seconds, coordinator clock) and per-level stats.

    ``gather_s``: the K-means actors fetching the shards from the object store (last attempt);
    ``cluster_s``: K-means, phi, tree and assignments (last attempt); ``total_s``: from the last rank's
    submission to the result, retries included; ``attempts``: 2 when an actor failure was retried.
    """

    epoch: int
    num_rows: int
    num_clustered: int
    num_missing: int
    num_actors: int
    attempts: int
    gather_s: float
    cluster_s: float
    total_s: float
    levels: tuple[LevelStats, ...] = field(default=())

    def as_metrics(self, prefix: str = "estep/") -> dict[str, float]:
        """Flat ``{name: number}`` for ``ray.train.report``/MLflow, e.g. ``estep/level0/size_min``."""
        out = {
            f"{prefix}{k}": float(v)
            for k, v in asdict(self).items()
            if k not in ("levels", "epoch")
        }
        for lvl, s in enumerate(self.levels):
            out.update({f"{prefix}level{lvl}/{k}": float(v) for k, v in asdict(s).items()})
        return out


def level_stats(prototypes: Prototypes) -> tuple[LevelStats, ...]:
    """Per level: cluster sizes over the clustered rows (assignment >= 0), empty clusters, phi range."""
    a = prototypes.assignments.cpu()
    present = a[:, 0] >= 0
    out = []
    for lvl, m in enumerate(prototypes.sizes):
        counts = torch.bincount(a[present, lvl], minlength=m).numpy()
        phi = prototypes.phi[lvl].detach().cpu().double()
        out.append(LevelStats(
            num_prototypes=m, size_min=int(counts.min()), size_median=float(np.median(counts)),
            size_max=int(counts.max()), empty_clusters=int((counts == 0).sum()),
            phi_min=float(phi.min()), phi_mean=float(phi.mean()), phi_max=float(phi.max()),
        ))
    return tuple(out)


# ------------------------------------------------------------------------------------- K-means actor
@dataclass(frozen=True)
class _Job:
    """What to cluster, as every K-means actor needs it."""

    clustering: ClusteringConfig
    method: ClusteringMethod
    pcl_sizes: tuple[int, ...]
    num_rows: int


class KMeansActor:
    """One member of the pool: holds a subset of the epoch's feature shards (on its GPU when it has one).

    Made remote by :meth:`ClusteringService.start`. Rows are addressed by *global position* (rank of
    the row's id among all clustered ids), which the coordinator sends after :meth:`load`.
    """

    def __init__(self, index: int, num_threads: int) -> None:
        torch.set_num_threads(max(1, num_threads))
        self.index = index
        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.release()

    # -- housekeeping
    def ping(self) -> int:
        return os.getpid()

    def _fault_point(self, method: str) -> None:
        trigger("kmeans_actor", actor=self.index, method=method)  # tests' fault plan (hierclr.runtime.faults)

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
    def cluster(self, job: _Job, epoch: int) -> tuple[Prototypes, tuple[LevelStats, ...]]:
        """Single-actor E-step over every row this actor holds (all of them)."""
        self._fault_point("cluster")
        order = np.argsort(self._positions)
        x, ids = self._x[torch.from_numpy(order).to(self.device)], self._ids[order]
        settings = self._settings(job)
        if job.method == "pcl":
            protos = flat_multi_kmeans(x, job.pcl_sizes, settings, epoch=epoch)
        else:
            protos = hierarchical_kmeans(x, job.clustering.sizes, settings, epoch=epoch)
        return self._finish(protos, ids, job.num_rows)

    @ray.method(num_returns=2)
    def build(
        self, job: _Job, level0: Sequence[KMeansResult], ids: np.ndarray, epoch: int
    ) -> tuple[Prototypes, tuple[LevelStats, ...]]:
        """Prototypes from distributed level-0 results: the tree above (hcsc) or the flat pack (pcl)."""
        self._fault_point("build")
        if job.method == "pcl":
            protos = flat_prototypes(level0, job.clustering, epoch=epoch)
        else:
            protos = build_hierarchy(level0[0], job.clustering.sizes, self._settings(job), epoch=epoch)
        return self._finish(protos, ids, job.num_rows)

    def _settings(self, job: _Job) -> ClusteringConfig:
        """The job's clustering settings, whole, on this actor's device."""
        return job.clustering.model_copy(update={"device": str(self.device)})

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


# --------------------------------------------------------------------------------------- coordinator
@dataclass
class _Round:
    """The submissions of one epoch by ``world_size`` ranks, and its outcome."""

    epoch: int
    world_size: int
    refs: dict[int, object] = field(default_factory=dict)
    started: bool = False
    done: bool = False
    result: tuple | None = None
    error: BaseException | None = None
    submitted_at: float = 0.0


class EStepCoordinator:
    """Named, threaded actor (0 CPU) that collects the ranks' shard refs and drives the E-step.

    ``submit`` blocks each caller until all ranks of its epoch have submitted and the E-step is done;
    the last rank's call runs it. Only one E-step runs at a time.
    """

    def __init__(self, actors: list, job: _Job, max_restarts: int) -> None:
        self._actors = actors
        self._actor_index = {a._actor_id.hex(): i for i, a in enumerate(actors)}
        self._job = job
        self._max_restarts = max_restarts
        self._cond = threading.Condition()
        self._rounds: dict[int, _Round] = {}
        self._estep_lock = threading.Lock()

    def ping(self) -> bool:
        return True

    def pending(self) -> dict[int, tuple[list[int], int]]:
        """Unfinished rounds: ``{epoch: (ranks that submitted, world_size)}`` (diagnostics, tests)."""
        with self._cond:
            return {e: (sorted(r.refs), r.world_size) for e, r in self._rounds.items() if not r.done}

    # -- rounds
    def submit(self, epoch: int, rank: int, world_size: int, shard: list) -> tuple[list, EStepStats]:
        """Rank ``rank``'s shard (``[ref]`` to ``(ids, features)``) for ``epoch``; returns ``([ref], stats)``
        with ``ref`` -> the epoch's :class:`Prototypes`, the same ref for every rank."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"estep: rank must be in [0, world_size) with world_size >= 1, got rank={rank}, "
                             f"world_size={world_size}")
        if len(shard) != 1:
            raise ValueError(f"estep: expected the shard as a one-element list [ref], got {len(shard)} elements")
        with self._cond:
            rnd = self._join_round(epoch, rank, world_size)
            rnd.refs[rank] = shard[0]
            runner = len(rnd.refs) == world_size
            if runner:
                rnd.started, rnd.submitted_at = True, time.perf_counter()
        if runner:
            self._run_round(rnd)
        with self._cond:
            self._cond.wait_for(lambda: rnd.done)
        if rnd.error is not None:
            raise rnd.error
        return rnd.result

    def _join_round(self, epoch: int, rank: int, world_size: int) -> _Round:
        """The open round this submission belongs to; stale rounds are discarded (caller holds the lock).

        A round is stale when a submission arrives for another epoch while it is unfinished, or when
        a rank submits twice to it, or the world size changed: the Train worker group was restarted,
        its old ranks are gone and will never complete that round.
        """
        for e, old in list(self._rounds.items()):
            if old.done:
                del self._rounds[e]
            elif e != epoch and not old.started:
                self._discard(old, f"a submission for epoch {epoch} arrived first (worker group restarted?)")
        rnd = self._rounds.get(epoch)
        if rnd is not None and (rnd.started or rnd.world_size != world_size or rank in rnd.refs):
            if not rnd.started:
                self._discard(rnd, f"rank {rank} submitted again with world_size={world_size} (new round)")
            rnd = None
        if rnd is None:
            rnd = self._rounds[epoch] = _Round(epoch, world_size)
        return rnd

    def _discard(self, rnd: _Round, why: str) -> None:
        log.warning("discarding the unfinished E-step round of epoch %d (%d of %d ranks): %s",
                    rnd.epoch, len(rnd.refs), rnd.world_size, why)
        rnd.error = ClusteringFailedError(f"E-step round of epoch {rnd.epoch} was discarded: {why}", rnd.epoch)
        rnd.done, rnd.refs = True, {}
        self._rounds.pop(rnd.epoch, None)
        self._cond.notify_all()

    def _run_round(self, rnd: _Round) -> None:
        try:
            with self._estep_lock:
                refs = [rnd.refs[r] for r in range(rnd.world_size)]
                result, error = self._estep(rnd.epoch, refs, rnd.submitted_at), None
        except Exception as e:  # noqa: BLE001 -- not swallowed: re-raised in every waiting rank
            result, error = None, e
        with self._cond:
            rnd.result, rnd.error, rnd.done, rnd.refs = result, error, True, {}
            self._cond.notify_all()

    # -- the E-step
    def _estep(self, epoch: int, refs: list, submitted_at: float) -> tuple[list, EStepStats]:
        """Run the E-step; one actor failure is retried, a second ends it with ClusteringFailedError."""
        first: str | None = None
        for attempt in (1, 2):
            try:
                if attempt == 2:
                    self._wait_for_actors()
                protos_ref, stats = self._attempt(epoch, refs, attempt)
                return [protos_ref], replace(stats, total_s=time.perf_counter() - submitted_at)
            except RayActorError as e:
                actor = self._actor_index.get(e.actor_id)
                what = f"K-means actor {actor if actor is not None else '?'} died ({_first_line(e)})"
                if first is None:
                    first = what
                    log.warning("E-step of epoch %d: %s; retrying the E-step once on the restarted actor(s)",
                                epoch, what)
                    continue
                raise ClusteringFailedError(
                    f"E-step of epoch {epoch} failed twice: first {first}; then, on the retry, {what}. "
                    f"The service allows one retry per E-step (max_restarts={self._max_restarts} per actor); "
                    f"ending the run.", epoch, actor,
                ) from None
        raise AssertionError("unreachable")

    def _wait_for_actors(self) -> None:
        """Block until every actor answers (a restarting actor queues the call; a dead one raises)."""
        ray.get([a.ping.options(max_task_retries=-1).remote() for a in self._actors])

    def _attempt(self, epoch: int, refs: list, attempt: int) -> tuple[object, EStepStats]:
        job = self._job
        t0 = time.perf_counter()
        active = self._actors[: min(len(self._actors), len(refs))]
        ranks = [list(range(a, len(refs), len(active))) for a in range(len(active))]
        loaded = ray.get([act.load.remote([refs[r] for r in rs]) for act, rs in zip(active, ranks)])
        ids, positions, dim = _check_ids(epoch, loaded, ranks, job.num_rows)
        ray.get([act.set_positions.remote(p) for act, p in zip(active, positions)])
        t1 = time.perf_counter()
        cfg = job.clustering
        if len(self._actors) == 1:
            protos_ref, levels_ref = active[0].cluster.remote(job, epoch)
        else:
            shards = ActorShards(active, positions, dim)
            if job.method == "pcl":
                level0 = [
                    distributed_kmeans(shards, k, cfg.model_copy(update={"seed": cfg.seed + i}))
                    for i, k in enumerate(job.pcl_sizes)
                ]
            else:
                level0 = [distributed_level0(shards, cfg.sizes[0], cfg)]
            protos_ref, levels_ref = self._actors[0].build.remote(job, level0, ids, epoch)
        levels = ray.get(levels_ref)
        t2 = time.perf_counter()
        ray.get([act.release.remote() for act in active])
        missing = job.num_rows - ids.shape[0]
        if missing:
            log.warning("E-step of epoch %d: %d of %d ids were not submitted; they get assignment -1",
                        epoch, missing, job.num_rows)
        stats = EStepStats(
            epoch=epoch, num_rows=job.num_rows, num_clustered=int(ids.shape[0]), num_missing=int(missing),
            num_actors=len(active), attempts=attempt, gather_s=t1 - t0, cluster_s=t2 - t1, total_s=t2 - t0,
            levels=levels,
        )
        return protos_ref, stats


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_ids(
    epoch: int, loaded: list[tuple[list[np.ndarray], list[int]]], ranks: list[list[int]], num_rows: int
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Sorted clustered ids, each actor's rows' global positions, the feature dimension; clear errors
    for ids out of range, ids submitted twice and disagreeing dimensions."""
    per_rank: dict[int, np.ndarray] = {}
    dims: dict[int, int] = {}
    for (shard_ids, shard_dims), rs in zip(loaded, ranks):
        for r, sid, dim in zip(rs, shard_ids, shard_dims):
            per_rank[r] = sid
            dims[r] = dim
    if len(set(dims.values())) > 1:
        raise ValueError(f"E-step of epoch {epoch}: ranks submitted features of different dimensions {dims}")
    all_ids = np.concatenate([per_rank[r] for r in sorted(per_rank)])
    if all_ids.size and (all_ids.min() < 0 or all_ids.max() >= num_rows):
        bad = all_ids[(all_ids < 0) | (all_ids >= num_rows)]
        raise ValueError(f"E-step of epoch {epoch}: {bad.size} ids outside [0, num_rows={num_rows}), "
                         f"e.g. {bad[:5].tolist()}")
    ids = np.sort(all_ids)
    dup = np.unique(ids[1:][ids[1:] == ids[:-1]])
    if dup.size:
        who = [r for r in sorted(per_rank) if np.isin(dup[0], per_rank[r])]
        raise ValueError(f"E-step of epoch {epoch}: {dup.size} dataset ids were submitted more than once "
                         f"(e.g. id {int(dup[0])} by ranks {who}); each id must come from exactly one rank")
    if not ids.size:
        raise ValueError(f"E-step of epoch {epoch}: no features were submitted by any rank")
    positions = [np.searchsorted(ids, np.concatenate(shard_ids)) for shard_ids, _ in loaded]
    return ids, positions, next(iter(dims.values()))


# -------------------------------------------------------------------------------------------- driver
@dataclass
class ClusteringService:
    """Driver-side handle of a running service: the named coordinator and the K-means actors."""

    name: str
    coordinator: object
    actors: list

    @classmethod
    def start(
        cls,
        name: str,
        clustering: ClusteringConfig,
        service: ClusteringServiceSection,
        *,
        method: ClusteringMethod = "hcsc",
        pcl_sizes: Sequence[int] = (),
        num_rows: int,
        max_workers: int = 64,
        ready_timeout_s: float | None = 120.0,
    ) -> ClusteringService:
        """Create the coordinator (named ``name``, 0 CPU, owned by this driver) and ``service.num_actors``
        K-means actors (``num_gpus=gpus_per_actor`` when > 0, else ``num_cpus=cpus_per_actor``;
        ``max_restarts=service.max_restarts``).

        ``method="pcl"`` clusters flat at each K of ``pcl_sizes`` (PCL v2), ignoring ``clustering.sizes``
        and ``min_cluster_size``. ``num_rows``: the dataset size (ids are ``0..num_rows-1``).
        ``max_workers``: the most ranks that may wait in the coordinator at once. ``ready_timeout_s``: how
        long to wait for the actors to be scheduled (None: do not wait).
        """
        if method not in ("hcsc", "pcl"):
            raise ValueError(f"clustering service: method must be 'hcsc' or 'pcl', got {method!r}")
        pcl_sizes = validate_num_clusters(pcl_sizes) if method == "pcl" else ()
        if num_rows < 1:
            raise ValueError(f"clustering service: num_rows must be >= 1, got {num_rows}")
        try:
            ray.get_actor(name)
        except ValueError:
            pass
        else:
            raise ValueError(f"clustering service: an actor named {name!r} already exists in this namespace")
        if service.gpus_per_actor > 0:
            resources = {"num_gpus": service.gpus_per_actor, "num_cpus": 0}
        else:
            resources = {"num_cpus": service.cpus_per_actor}
        remote_actor = ray.remote(KMeansActor)
        actors = [
            remote_actor.options(max_restarts=service.max_restarts, name=f"{name}-kmeans-{i}", **resources,
                                 scheduling_strategy=OWN_RESOURCES).remote(
                i, int(service.cpus_per_actor)
            )
            for i in range(service.num_actors)
        ]
        job = _Job(clustering=clustering, method=method, pcl_sizes=pcl_sizes, num_rows=int(num_rows))
        coordinator = (
            ray.remote(EStepCoordinator)
            .options(name=name, num_cpus=0, max_concurrency=max_workers + 4, max_restarts=0,
                     scheduling_strategy=OWN_RESOURCES)
            .remote(actors, job, service.max_restarts)
        )
        svc = cls(name=name, coordinator=coordinator, actors=actors)
        if ready_timeout_s is not None:
            pending = [coordinator.ping.remote(), *[a.ping.remote() for a in actors]]
            _, not_ready = ray.wait(pending, num_returns=len(pending), timeout=ready_timeout_s)
            if not_ready:
                svc.shutdown()
                raise RuntimeError(
                    f"clustering service {name!r}: {len(not_ready)} of {len(pending)} actors were not scheduled "
                    f"within {ready_timeout_s} s; each K-means actor asks for {resources} (see service.*)"
                )
        return svc

    def client(self) -> ClusteringClient:
        return ClusteringClient(self.coordinator)

    def shutdown(self) -> None:
        """Kill the coordinator and the K-means actors (no restart)."""
        for a in (self.coordinator, *self.actors):
            ray.kill(a, no_restart=True)


# -------------------------------------------------------------------------------------------- worker
class ClusteringClient:
    """Worker-side handle: :meth:`estep` submits this rank's shard and returns the epoch's prototypes."""

    def __init__(self, coordinator) -> None:
        self._coordinator = coordinator

    def estep(
        self,
        epoch: int,
        rank: int,
        world_size: int,
        ids: Tensor,
        features: Tensor,
        device: torch.device | str | None = None,
        timeout_s: float | None = None,
    ) -> tuple[Prototypes, EStepStats]:
        """Submit this rank's ``ids (n,)`` int64 and ``features (n, d)`` float32, wait for all
        ``world_size`` ranks and the clustering, return ``(prototypes on device, stats)``.

        Every rank must call it for the epoch (it is a barrier). The shard goes into the object store
        once, owned by this worker, and only its ref travels. Raises :class:`ClusteringFailedError`
        when the E-step failed twice, ValueError for bad input (e.g. an id submitted by two ranks).
        """
        ids_np, feats_np = _shard_arrays(ids, features)
        shard_ref = ray.put((ids_np, feats_np))
        try:
            [protos_ref], stats = ray.get(
                self._coordinator.submit.remote(int(epoch), int(rank), int(world_size), [shard_ref]),
                timeout=timeout_s,
            )
            protos = ray.get(protos_ref, timeout=timeout_s)
        except RayTaskError as e:
            if isinstance(e.cause, (ClusteringFailedError, ValueError)):
                raise e.cause from e
            raise
        except GetTimeoutError as e:
            raise TimeoutError(f"estep: epoch {epoch} rank {rank}/{world_size} got no prototypes within "
                               f"{timeout_s} s (is every rank calling estep?)") from e
        return (protos.to(device) if device is not None else protos), stats


def connect(name: str, namespace: str | None = None) -> ClusteringClient:
    """The client of the running service ``name`` (from a Ray Train worker of the same job)."""
    try:
        return ClusteringClient(ray.get_actor(name, namespace=namespace))
    except ValueError as e:
        raise ValueError(f"no clustering service named {name!r} is running (start it with "
                         f"ClusteringService.start on the driver)") from e


def _shard_arrays(ids: Tensor, features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    ids_np = np.ascontiguousarray(torch.as_tensor(ids).detach().cpu().numpy())
    feats_np = np.ascontiguousarray(torch.as_tensor(features).detach().cpu().numpy())
    if ids_np.ndim != 1 or not np.issubdtype(ids_np.dtype, np.integer):
        raise ValueError(f"estep: ids must be a 1-D integer tensor, got {ids_np.dtype} {ids_np.shape}")
    if feats_np.ndim != 2 or feats_np.shape[0] != ids_np.shape[0]:
        raise ValueError(f"estep: features must be (n, d) with n = len(ids) = {ids_np.shape[0]}, "
                         f"got {feats_np.shape}")
    if not np.issubdtype(feats_np.dtype, np.floating):
        raise ValueError(f"estep: features must be floating point, got {feats_np.dtype}")
    if not np.isfinite(feats_np).all():
        raise ValueError("estep: features contain NaN or inf values")
    return ids_np.astype(np.int64, copy=False), feats_np.astype(np.float32, copy=False)
