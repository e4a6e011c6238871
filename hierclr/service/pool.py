"""The driver's handle of the service: starts the coordinator and the K-means actor pool, shuts them down."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import ray

from hierclr.clustering.flat import validate_num_clusters
from hierclr.config.clustering import ClusteringConfig, ClusteringServiceSection
from hierclr.runtime.ray_start import OWN_RESOURCES
from hierclr.service.actors import ClusteringJob, ClusteringMethod, KMeansActor
from hierclr.service.client import ClusteringClient
from hierclr.service.coordinator import EStepCoordinator


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
        compat: Literal["official", "paper"] = "official",
        max_workers: int = 64,
        ready_timeout_s: float | None = 120.0,
    ) -> ClusteringService:
        """Create the coordinator (named ``name``, 0 CPU, owned by this driver) and ``service.num_actors``
        K-means actors (``num_gpus=gpus_per_actor`` when > 0, else ``num_cpus=cpus_per_actor``;
        ``max_restarts=service.max_restarts``).

        ``method="pcl"`` clusters flat at each K of ``pcl_sizes`` (PCL v2), ignoring ``clustering.sizes``
        and ``min_cluster_size``. ``num_rows``: the dataset size (ids are ``0..num_rows-1``). ``compat``: the
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
        job = ClusteringJob(clustering=clustering, method=method, pcl_sizes=pcl_sizes, num_rows=int(num_rows),
                            compat=compat)
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
