"""Run by ``tests/ray/service/test_gpu_placement.py`` in a process of its own: a local Ray with 8 logical
(fake) GPUs, on which the ImageNet preset's Train workers (a placement group as Ray Train V2 makes it) and its
K-means actors (``service.gpu_share``) are placed with the options hierclr computes. Prints one JSON line.

The K-means actors are started by the real coordinator code (``EStepCoordinator._place_actors``) with the
real Ray options (``kmeans_actor_options``); only the actor class is a stand-in without torch, so that its
processes start fast. hierclr (torch) is imported while Ray starts."""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import ray
from ray.util.placement_group import placement_group, remove_placement_group


class Probe:
    """Asks Ray for what a K-means actor asks; answers with the GPU Ray gave it and the device CUDA will show it
    (``KMeansActor`` puts its K-means on ``cuda`` when ``ray.get_gpu_ids()`` is not empty)."""

    def ping(self) -> tuple[list, str | None]:
        return [int(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")


def load_hierclr() -> SimpleNamespace:
    from hierclr.config.pretrain import load_config
    from hierclr.methods import plan_for
    from hierclr.runtime.driver import run_needs
    from hierclr.runtime.runs import check_resources
    from hierclr.service import coordinator
    from hierclr.service.actors import ActorSpec, kmeans_actor_options
    from hierclr.service.errors import ClusteringFailedError

    def spawn(spec, index, generation=0, node_id=None):  # the stand-in class, the real options
        return ray.remote(Probe).options(**kmeans_actor_options(spec, index, generation, node_id)).remote()

    coordinator.spawn_kmeans_actor = spawn
    common = ["data.num_cpus=1", "resources.cpus_per_worker=0.1"]
    return SimpleNamespace(
        plan_for=plan_for, run_needs=run_needs, check_resources=check_resources, ActorSpec=ActorSpec,
        EStepCoordinator=coordinator.EStepCoordinator, ClusteringFailedError=ClusteringFailedError, spawn=spawn,
        # the preset as shipped (8 workers, one actor), and 4 workers with one actor on each of their GPUs
        # (distributed Lloyd), 4 GPUs left idle for the actors to avoid
        presets={"preset": load_config("imagenet-r50-200ep", common),
                 "per_gpu": load_config("imagenet-r50-200ep", [*common, "service.num_actors=null",
                                                               "resources.num_workers=4"])},
        big=load_config("imagenet-r50-200ep", ["resources.num_workers=16", "data.num_cpus=1",
                                               "resources.cpus_per_worker=0.05"]))


def coordinator(h, layout, timeout_s: float):
    spec = h.ActorSpec(name=f"placement-{time.monotonic_ns()}", resources=dict(layout.actor_options),
                       max_restarts=0, num_threads=1, on_worker_gpus=layout.on_worker_gpus, ready_timeout_s=timeout_s)
    coord = h.EStepCoordinator([], job=None, max_restarts=0, spec=spec, num_actors=layout.num_actors)
    coord._nodes = [ray.get_runtime_context().get_node_id()] * layout.num_actors  # every rank on this one node
    return coord


def gpus_free() -> float:
    return ray.available_resources().get("GPU", 0.0)


def main() -> dict:
    out: dict = {}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_hierclr)
        ray.init(address="local", num_cpus=2, num_gpus=8, include_dashboard=False, log_to_driver=False)
        h = loading.result()
    out["start_seconds"] = round(time.perf_counter() - t0, 2)
    try:
        for key, cfg in h.presets.items():
            plan, layout = h.plan_for(cfg), cfg.actor_layout()
            h.check_resources(cfg, *h.run_needs(cfg), plan.needs_what)  # holds: no error
            t0 = time.perf_counter()
            workers = placement_group([{"CPU": cfg.resources.cpus_per_worker, "GPU": plan.worker_gpus()}]
                                      * cfg.resources.num_workers, strategy="PACK")  # Ray Train V2's
            placed = workers.wait(10)
            coord = coordinator(h, layout, timeout_s=10)
            coord._place_actors(epoch=20)  # what the first E-step does
            seen = ray.get([a.ping.remote() for a in coord._actors], timeout=10)
            free = round(gpus_free(), 4)
            idle = cfg.resources.num_workers < 8 and placement_group([{"GPU": 1.0}] * (8 - cfg.resources.num_workers))
            out[key] = {"workers_placed": placed, "worker_gpus": plan.worker_gpus(),
                        "actor_gpu_ids": sorted(g for ids, _ in seen for g in ids),
                        "cuda_visible": sorted(v for _, v in seen), "actor_options": layout.actor_options,
                        "gpus_free": free,
                        # the actors sat in what the workers left: the other GPUs are still whole
                        "other_gpus_whole": bool(idle and idle.wait(5)),
                        "seconds": round(time.perf_counter() - t0, 2)}
            if idle:
                remove_placement_group(idle)
            for a in coord._actors:
                ray.kill(a, no_restart=True)
            remove_placement_group(workers)
        # over-asking is refused before anything is scheduled: 16 workers on 8 GPUs
        try:
            h.check_resources(h.big, *h.run_needs(h.big), h.plan_for(h.big).needs_what)
            out["refused"] = None
        except ValueError as e:
            out["refused"] = str(e)
        # the workers' GPUs leave no room for the actors (each worker asks a whole GPU): the actors' start
        # fails within its timeout, names the problem and gives back what it asked for
        full = placement_group([{"CPU": 0.1, "GPU": 1.0}] * 8, strategy="PACK")
        full.wait(10)
        coord = coordinator(h, h.presets["per_gpu"].actor_layout(), timeout_s=0.5)
        t0 = time.perf_counter()
        try:
            coord._place_actors(epoch=20)
            out["no_room"] = None
        except h.ClusteringFailedError as e:
            out["no_room"] = str(e)
        out["no_room_seconds"] = round(time.perf_counter() - t0, 2)
        remove_placement_group(full)
        time.sleep(0.2)
        out["gpus_free_after"] = round(gpus_free(), 4)  # the killed actors did not take the freed GPUs
        # what the coordinator's order avoids: actors started before the workers pack onto one GPU, and the
        # eighth worker's bundle then never fits (two actors are enough: GPU 0 keeps 0.8 < 0.9)
        early = [h.spawn(coord._spec, i, generation=99) for i in range(2)]
        out["early_actor_gpu_ids"] = sorted(g for ids, _ in ray.get([a.ping.remote() for a in early], timeout=10)
                                            for g in ids)
        late = placement_group([{"CPU": 0.1, "GPU": 0.9}] * 8, strategy="PACK")
        out["workers_after_early_actors_placed"] = late.wait(0.5)
    finally:
        t0 = time.perf_counter()
        ray.shutdown()
        out["shutdown_seconds"] = round(time.perf_counter() - t0, 2)
    return out


if __name__ == "__main__":
    t_start = time.perf_counter()
    result = main()
    result["total_seconds"] = round(time.perf_counter() - t_start, 2)
    print("RESULT " + json.dumps(result))
    sys.exit(0)
