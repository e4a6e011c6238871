"""The E-step clustering service: a Ray actor pool that turns the workers' embeddings into one
:class:`~hierclr.clustering.Prototypes` per epoch (spec "E-step", ARCHITECTURE "clustering service").

Data flow (nothing large passes through the driver or the coordinator)::

    Train worker r: ray.put((ids, features)) -> [ref] --submit--> coordinator (named, threaded, 0 CPU)
    coordinator, once all world_size ranks of the epoch have submitted:
      1 K-means actor : actor ray.get()s every shard, sorts rows by id, runs hierarchical_kmeans
                        (method "hcsc") or flat_multi_kmeans ("pcl"), the ClusteringConfig passed whole
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
E-step (or Ray's OOM killer or a crash ends it) the coordinator retries the whole E-step once (the shard refs
are still owned by the workers, so they are simply re-sent), first replacing an actor whose restarts are used
up; a second failure, or an error inside K-means, raises :class:`ClusteringFailedError` (epoch, cause) in every
waiting worker. The coordinator itself restarts when it dies; the submissions waiting in it are retried by Ray
on the new one (``max_task_retries``), so the epoch's E-step re-runs. A new submission round for an epoch (the
Train worker group restarted) discards any unfinished round.

Modules: :mod:`~hierclr.service.pool` (the driver's :class:`ClusteringService`), :mod:`~hierclr.service.client`
(the workers' :func:`connect`), :mod:`~hierclr.service.coordinator`, :mod:`~hierclr.service.actors` (the
K-means actors), :mod:`~hierclr.service.stats` and :mod:`~hierclr.service.errors`.
"""
from hierclr.service.client import ClusteringClient, connect
from hierclr.service.errors import ClusteringFailedError
from hierclr.service.pool import ClusteringService
from hierclr.service.stats import EStepStats, LevelStats

__all__ = ["ClusteringClient", "ClusteringFailedError", "ClusteringService", "EStepStats", "LevelStats", "connect"]
