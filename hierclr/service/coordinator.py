"""The E-step coordinator: a named, threaded actor that collects every rank's shard ref for an epoch, drives
the K-means actors (one retry when one dies) and hands every rank the same prototypes ref."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import ray
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from hierclr.clustering.distributed import distributed_kmeans, distributed_level0
from hierclr.service.actors import ActorShards, ActorSpec, ClusteringJob, spawn_kmeans_actor
from hierclr.service.errors import ClusteringFailedError, error_cause
from hierclr.service.stats import EStepStats

log = logging.getLogger(__name__)


@dataclass
class _Round:
    """The submissions of one epoch by ``world_size`` ranks, and its outcome."""

    epoch: int
    world_size: int
    refs: dict[int, object] = field(default_factory=dict)
    nodes: dict[int, str | None] = field(default_factory=dict)  # each rank's Ray node (where its actor goes)
    started: bool = False
    done: bool = False
    result: tuple | None = None
    error: BaseException | None = None
    submitted_at: float = 0.0


class EStepCoordinator:
    """Named, threaded actor (0 CPU) that collects the ranks' shard refs and drives the E-step.

    ``submit`` blocks each caller until all ranks of its epoch have submitted and the E-step is done;
    the last rank's call runs it. Only one E-step runs at a time.

    ``spec.on_worker_gpus``: ``actors`` is empty and the coordinator starts ``num_actors`` actors itself at the
    first E-step, actor ``i`` on the node of rank ``i`` (the ranks send their node with their shard): the
    workers then hold their GPUs, and each actor takes the share its worker left (:func:`kmeans_actor_options`).
    They are owned by the coordinator and end with it.
    """

    def __init__(self, actors: list, job: ClusteringJob, max_restarts: int, spec: ActorSpec | None = None,
                 num_actors: int | None = None) -> None:
        self._actors = list(actors)
        self._actor_index = {a._actor_id.hex(): i for i, a in enumerate(actors)}
        self._spec = spec  # how to replace an actor that used up its restarts (None: never)
        self._num_actors = num_actors if num_actors is not None else len(self._actors)
        self._nodes: list[str | None] = []  # the last round's node of each rank
        self._generation = 0
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
    def submit(self, epoch: int, rank: int, world_size: int, shard: list,
               node_id: str | None = None) -> tuple[list, EStepStats]:
        """Rank ``rank``'s shard (``[ref]`` to ``(ids, features)``) for ``epoch``; returns ``([ref], stats)``
        with ``ref`` -> the epoch's :class:`Prototypes`, the same ref for every rank. ``node_id``: the rank's Ray
        node (where its K-means actor is started when they share the workers' GPUs)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"estep: rank must be in [0, world_size) with world_size >= 1, got rank={rank}, "
                             f"world_size={world_size}")
        if len(shard) != 1:
            raise ValueError(f"estep: expected the shard as a one-element list [ref], got {len(shard)} elements")
        with self._cond:
            rnd = self._join_round(epoch, rank, world_size)
            rnd.refs[rank] = shard[0]
            rnd.nodes[rank] = node_id
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
        rnd.done, rnd.refs, rnd.nodes = True, {}, {}
        self._rounds.pop(rnd.epoch, None)
        self._cond.notify_all()

    def _run_round(self, rnd: _Round) -> None:
        try:
            with self._estep_lock:
                refs = [rnd.refs[r] for r in range(rnd.world_size)]
                nodes = [rnd.nodes.get(r) for r in range(rnd.world_size)]
                result, error = self._estep(rnd.epoch, refs, rnd.submitted_at, nodes), None
        except Exception as e:  # noqa: BLE001 -- not swallowed: re-raised in every waiting rank
            result, error = None, e
        with self._cond:
            rnd.result, rnd.error, rnd.done, rnd.refs, rnd.nodes = result, error, True, {}, {}
            self._cond.notify_all()

    # -- the E-step
    def _estep(self, epoch: int, refs: list, submitted_at: float,
               nodes: list[str | None] | None = None) -> tuple[list, EStepStats]:
        """Run the E-step; one actor failure is retried, a second ends it with ClusteringFailedError, as does any
        other actor-side error (naming the epoch and the cause)."""
        self._nodes = list(nodes or [])
        if not self._actors and self._spec is not None and self._spec.on_worker_gpus:
            self._place_actors(epoch)
        first: str | None = None
        for attempt in (1, 2):
            try:
                if attempt == 2:
                    self._wait_for_actors()
                protos_ref, stats = self._attempt(epoch, refs, attempt)
                return [protos_ref], replace(stats, total_s=time.perf_counter() - submitted_at)
            except ACTOR_LOST as e:
                actor = self._actor_index.get(getattr(e, "actor_id", None))
                verb = "died" if isinstance(e, RayActorError) else "was lost"
                what = f"K-means actor {actor if actor is not None else '?'} {verb} ({error_cause(e)})"
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
            except RayTaskError as e:  # K-means itself raised on an actor
                if isinstance(e.cause, (ClusteringFailedError, ValueError)):
                    raise e.cause from None
                raise ClusteringFailedError(f"E-step of epoch {epoch}: K-means failed on an actor: {error_cause(e)}",
                                            epoch) from None
        raise AssertionError("unreachable")

    def _node_of(self, index: int) -> str | None:
        """Where actor ``index`` goes: rank ``index``'s node when the actors share the workers' GPUs."""
        if self._spec is None or not self._spec.on_worker_gpus or not self._nodes:
            return None
        return self._nodes[index % len(self._nodes)]

    def _place_actors(self, epoch: int) -> None:
        """Start the pool on the training workers' nodes (``spec.on_worker_gpus``), now that the workers hold
        their GPUs; a start that does not finish within ``spec.ready_timeout_s`` ends the E-step with a
        ClusteringFailedError saying what was asked and what the cluster has free (never a silent wait)."""
        spec, n = self._spec, self._num_actors
        self._actors = [spawn_kmeans_actor(spec, i, self._generation, self._node_of(i)) for i in range(n)]
        self._actor_index = {a._actor_id.hex(): i for i, a in enumerate(self._actors)}
        t0 = time.perf_counter()
        _, not_ready = ray.wait([a.ping.remote() for a in self._actors], num_returns=n,
                                timeout=spec.ready_timeout_s)
        if not_ready:
            free = ray.available_resources()
            for a in self._actors:
                ray.kill(a, no_restart=True)
            self._actors, self._actor_index = [], {}
            self._generation += 1  # the next try must not meet the killed actors' names
            raise ClusteringFailedError(
                f"E-step of epoch {epoch}: {len(not_ready)} of {n} K-means actors ({spec.resources} each, pinned to "
                f"the training workers' nodes to share their GPUs) did not start within {spec.ready_timeout_s:g} s; "
                f"the cluster has {free.get('GPU', 0):g} GPU and {free.get('CPU', 0):g} CPU unreserved. Something "
                "else holds the share of the workers' GPUs that service.gpu_share leaves them (resources.gpus_per_"
                "worker - gpu_share is what each worker asks), or the actors were slow to start", epoch)
        log.info("E-step of epoch %d: %d K-means actors started on the workers' nodes in %.1f s", epoch, n,
                 time.perf_counter() - t0)

    def _wait_for_actors(self) -> None:
        """Block until every actor answers (a restarting actor queues the call); an actor that is dead for good
        (its restarts used up) is replaced by a new one, so that the run's later E-steps, and a restarted Train
        worker group, do not meet it again."""
        for i, actor in enumerate(self._actors):
            try:
                ray.get(actor.ping.options(max_task_retries=-1).remote())
            except RayActorError:
                if self._spec is None:
                    raise
                self._generation += 1
                log.warning("K-means actor %d is dead for good; starting a new one in its place", i)
                self._actors[i] = spawn_kmeans_actor(self._spec, i, self._generation, self._node_of(i))
                self._actor_index[self._actors[i]._actor_id.hex()] = i
                ray.get(self._actors[i].ping.remote())

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
        expected = job.num_rows if job.num_expected is None else job.num_expected
        missing = max(expected - ids.shape[0], 0)
        if missing:
            log.warning("E-step of epoch %d: %d of %d ids were not submitted; they get assignment -1",
                        epoch, missing, expected)
        stats = EStepStats(
            epoch=epoch, num_rows=job.num_rows, num_clustered=int(ids.shape[0]), num_missing=int(missing),
            num_actors=len(active), attempts=attempt, gather_s=t1 - t0, cluster_s=t2 - t1, total_s=t2 - t0,
            levels=levels,
        )
        return protos_ref, stats


# What losing a K-means actor looks like to the coordinator: the actor died (and may restart), Ray's OOM killer
# ended its worker (OutOfMemoryError is not a RayActorError: it used to escape the retry), its process or node
# crashed, or an object it held is gone.
ACTOR_LOST = (RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError, ObjectLostError)


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
