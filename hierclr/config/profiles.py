"""``resources.profile: local`` (``--local``): size the Ray resources of a run to this machine.

One rule, in :func:`local_resources`: with GPUs, one Train worker per GPU (as many as divide the global batch),
a few CPUs each, the rest of the CPUs decode (``data.num_cpus``); without, one Train worker takes the CPUs the
data stream and the clustering actor leave (one DDP worker on a CPU beats several splitting its cores). The
clustering actor (HCSC, PCL) takes one CPU. ``resources.local_num_cpus`` is raised to what the run holds when that
exceeds the machine (a 2-core box still runs worker + data + actor, as the demo preset does). The loader applies
these values over the preset or file, and any ``--set`` of the same fields over them.
"""
from __future__ import annotations

import os
from typing import Any

MAX_CPUS_PER_GPU_WORKER = 8


def machine() -> tuple[int, int]:
    """``(CPUs this process may use, CUDA GPUs torch sees)``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    import torch

    return cpus, torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_resources(cpus: int, gpus: int, *, batch_size: int | None = None, clustering: bool = False) -> dict[str, Any]:
    """The dotted config values of a run on one machine with ``cpus`` CPUs and ``gpus`` GPUs (see the module doc).
    ``batch_size``: the global batch, which the number of workers must divide; ``clustering``: the run starts a
    clustering actor (the ``service.*`` values are included)."""
    if cpus < 1 or gpus < 0:
        raise ValueError(f"local_resources: need cpus >= 1 and gpus >= 0, got {cpus}, {gpus}")
    actor = 1 if clustering else 0
    if gpus:
        workers = max(w for w in range(1, gpus + 1) if batch_size is None or batch_size % w == 0)
        per_worker = max(1, min(MAX_CPUS_PER_GPU_WORKER, (cpus - actor) // (2 * workers)))
        data = max(1, cpus - actor - workers * per_worker)
    else:
        workers = 1
        data = max(1, cpus // 4)
        per_worker = max(1, cpus - actor - data)
    out: dict[str, Any] = {
        "resources.use_gpu": bool(gpus), "resources.num_workers": workers, "resources.cpus_per_worker": per_worker,
        "resources.gpus_per_worker": 1 if gpus else 0, "data.num_cpus": data,
        "resources.local_num_cpus": max(cpus, workers * per_worker + data + actor),
    }
    if clustering:
        out.update({"service.num_actors": 1, "service.cpus_per_actor": 1, "service.gpus_per_actor": 0})
    return out


def local_overrides(tree: dict, *, services: bool) -> list[str]:
    """``key=value`` overrides sizing the config ``tree`` (preset or file with the ``--set`` overrides applied) to
    this machine. ``services``: the schema has a ``service`` section (pretraining; used unless ``method: moco``)."""
    cpus, gpus = machine()
    batch = (tree.get("optim") or {}).get("batch_size")
    clustering = services and tree.get("method", "hcsc") != "moco"
    values = local_resources(cpus, gpus, batch_size=batch if isinstance(batch, int) else None, clustering=clustering)
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]
