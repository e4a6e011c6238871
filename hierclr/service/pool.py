"""The driver's handle of the service: starts the coordinator and the K-means actor pool, shuts them down."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import ray

from hierclr.clustering.flat import validate_num_clusters
from hierclr.config.clustering import ActorLayout, ClusteringConfig, ClusteringServiceSection, actor_layout
from hierclr.runtime.ray_start import OWN_RESOURCES
from hierclr.service.actors import ActorSpec, ClusteringJob, ClusteringMethod, spawn_kmeans_actor
from hierclr.service.client import ClusteringClient
from hierclr.service.coordinator import EStepCoordinator

log = logging.getLogger(__name__)


def not_ready_message(name: str, not_ready: int, total: int, timeout_s: float, per_actor: dict, free: dict) -> str:
    """Why the service's actors were not ready in time, without blaming resources that are free: when the cluster
    still has room for every actor that is not ready, they were not waiting for resources but starting slowly
    (a new worker process and its imports on a loaded machine)."""
    cpu, gpu = per_actor.get("num_cpus", 0) * not_ready, per_actor.get("num_gpus", 0) * not_ready
    have = f"{free.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} GPU unreserved"
    head = f"clustering service {name!r}: {not_ready} of {total} actors did not answer within {timeout_s:g} s"
    if free.get("CPU", 0) + 1e-9 >= cpu and free.get("GPU", 0) + 1e-9 >= gpu:
        return (f"{head}, though the cluster has {have}, enough for them (each K-means actor asks for "
                f"{per_actor}): not a shortage of resources; their processes were slow to start (a loaded "
                "machine, slow imports). Retry, or start on a less loaded cluster")
    return (f"{head}; the cluster has {have} and they need {cpu:g} CPU and {gpu:g} GPU (each K-means actor asks "
            f"for {per_actor}, see service.*): lower service.num_actors / cpus_per_actor / gpus_per_actor or add "
            "resources (when the cluster autoscales, they may still be coming)")


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
        num_expected: int | None = None,
        compat: Literal["official", "paper"] = "official",
        max_workers: int = 64,
        ready_timeout_s: float | None = 120.0,
        layout: ActorLayout | None = None,
    ) -> ClusteringService:
        """Create the coordinator (named ``name``, 0 CPU, owned by this driver) and the K-means actors as
        ``layout`` says (:func:`~hierclr.config.clustering.actor_layout`; None: ``actor_layout(service)``, CPU
        workers): ``layout.num_actors`` actors with ``layout.actor_options``, ``max_restarts=service.max_restarts``.
        With ``layout.on_worker_gpus`` (``service.gpu_share``) the coordinator starts them at the first E-step, on
        the training workers' nodes, and only the coordinator is started here.

        ``method="pcl"`` clusters flat at each K of ``pcl_sizes`` (PCL v2), ignoring ``clustering.sizes``
        and ``min_cluster_size``. ``num_rows``: the dataset size (ids are ``0..num_rows-1``); ``num_expected``: the
        ids submitted per E-step (``data.fraction``: fewer; default ``num_rows``). ``compat``: the
        run's; ``official`` makes the actors warn when the E-step will not run faiss.
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
        layout = layout if layout is not None else actor_layout(service)
        resources = dict(layout.actor_options)
        spec = ActorSpec(name=name, resources=resources, max_restarts=service.max_restarts,
                         num_threads=int(service.cpus_per_actor), on_worker_gpus=layout.on_worker_gpus,
                         ready_timeout_s=ready_timeout_s if ready_timeout_s is not None else 120.0)
        actors = [] if layout.on_worker_gpus else [spawn_kmeans_actor(spec, i) for i in range(layout.num_actors)]
        job = ClusteringJob(clustering=clustering, method=method, pcl_sizes=pcl_sizes, num_rows=int(num_rows),
                            num_expected=int(num_rows if num_expected is None else num_expected), compat=compat)
        # The coordinator holds no state a restart loses for good: the workers' submissions that were in flight
        # when it died are retried by Ray on the restarted coordinator (max_task_retries), the shards are still
        # owned by the workers, and the epoch's E-step re-runs from them (issue 18: a killed coordinator used to
        # fail every worker, and every worker-group restart, with ActorDiedError).
        coordinator = (
            ray.remote(EStepCoordinator)
            .options(name=name, num_cpus=0, max_concurrency=max_workers + 4, max_restarts=service.max_restarts,
                     max_task_retries=-1, scheduling_strategy=OWN_RESOURCES)
            .remote(actors, job, service.max_restarts, spec, layout.num_actors)
        )
        svc = cls(name=name, coordinator=coordinator, actors=actors)
        if ready_timeout_s is not None:
            t0 = time.perf_counter()
            pending = [coordinator.ping.remote(), *[a.ping.remote() for a in actors]]
            _, not_ready = ray.wait(pending, num_returns=len(pending), timeout=ready_timeout_s)
            if not_ready:
                free = ray.available_resources()
                svc.shutdown()
                raise RuntimeError(not_ready_message(name, len(not_ready), len(pending), ready_timeout_s,
                                                     resources, free))
            log.info("clustering service %r: %d actors ready in %.1f s", name, len(pending),
                     time.perf_counter() - t0)
        return svc

    def client(self) -> ClusteringClient:
        return ClusteringClient(self.coordinator)

    def shutdown(self) -> None:
        """Kill the coordinator and the K-means actors (no restart; actors the coordinator started end with it)."""
        for a in (self.coordinator, *self.actors):
            ray.kill(a, no_restart=True)
