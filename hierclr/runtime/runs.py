"""What every training driver (pretrain, finetune, hcal) does the same way on the Ray driver: start or join Ray,
place the run directory, resume, check that the cluster can hold the run, join a sweep's MLflow tree.

Run directories: ``<checkpoint.storage_path>/<name>-<YYYYmmdd-HHMMSS>`` per invocation. ``resume="latest"``
reuses the newest run directory of the same ``name`` (Ray Train restores its latest checkpoint and the
same MLflow run continues); ``resume=PATH`` starts a new run directory from a checkpoint (or the newest
checkpoint of a run directory) and also continues the MLflow run recorded in it.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hierclr.io.checkpoint import (
    check_ray_latest,
    latest_checkpoint,
    latest_run,
    quarantine_broken,
    read_state_json,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingLink:
    """How a run joins a larger experiment (a sweep trial): its MLflow parent, a key that finds the same MLflow
    run again when the trial is resumed, a display name and extra tags."""

    parent_run_id: str | None = None
    run_key: str | None = None
    run_name: str | None = None
    tags: dict = field(default_factory=dict)
    stop_board: str | None = None  # cooperative early stopping (hierclr.runtime.early_stop)
    stop_key: str | None = None


def storage_root(cfg) -> str:
    uri = cfg.checkpoint.storage_path
    if uri.startswith(("s3://", "gs://")):
        return uri.rstrip("/")
    return str(Path(os.path.expanduser(uri)).resolve())


def data_path(uri: str, cfg) -> str:
    """``builtin://`` datasets are materialised once into ``data.builtin_cache``; other URIs pass through."""
    from hierclr.data.builtin import is_builtin, materialize_builtin

    if is_builtin(uri):
        return materialize_builtin(uri, Path(os.path.expanduser(cfg.data.builtin_cache)))
    return uri


def stream_config(cfg):
    """The Ray Data streams' settings of a run, from its ``data`` section, ``seed`` and transforms."""
    from hierclr.data.streams import StreamConfig

    d = cfg.data
    return StreamConfig(transforms=d.transform_config(), batch_size=d.decode_batch_size, num_cpus=d.num_cpus,
                        augment_on=d.augment_on, seed=cfg.seed, max_bad_fraction=d.max_bad_fraction)


def start_ray(cfg) -> None:
    import ray

    from hierclr.runtime.ray_start import ensure_ray

    if ray.is_initialized():
        return
    if cfg.resources.address:
        ray.init(address=cfg.resources.address, log_to_driver=True)
    else:
        ensure_ray(cfg.resources.local_num_cpus)


def resolve_run(cfg, root: str, resume: str | None) -> tuple[str, str | None, dict | None]:
    """(run name, checkpoint to load when Ray has none, that checkpoint's state.json)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if resume is None:
        name = f"{cfg.name}-{stamp}"
        if Path(root, name).exists():
            name = f"{name}-{uuid.uuid4().hex[:4]}"
        return name, None, None
    if resume == "latest":
        name = latest_run(root, cfg.name)
        if name is None:
            raise ValueError(f"--resume latest: no run named {cfg.name!r} with a checkpoint under {root}")
        check_ray_latest(Path(root, name))
        quarantine_broken(Path(root, name))  # (this process holds the run now: nothing else is writing it)
        ckpt = latest_checkpoint(Path(root, name))
        return name, str(ckpt), read_state_json(ckpt)
    ckpt = latest_checkpoint(resume)
    return f"{cfg.name}-{stamp}", str(ckpt), read_state_json(ckpt)


def check_resume_config(cfg, ckpt: str, sections: tuple[str, ...]) -> None:
    """A checkpoint only continues the same model and objective; schedules and resources may change."""
    import yaml

    old = yaml.safe_load(Path(ckpt, "config.yaml").read_text()) if Path(ckpt, "config.yaml").is_file() else None
    if not old:
        return
    new = cfg.model_dump(mode="json")
    for section in sections:
        if old.get(section) != new.get(section):
            raise ValueError(f"--resume {ckpt}: the checkpoint was trained with {section}={old.get(section)!r}, "
                             f"this config has {new.get(section)!r}")


def check_resources(cfg, need_cpu: float, need_gpu: float, what: str) -> None:
    """Fail fast when the Ray cluster cannot hold the run at all (Ray Train would otherwise wait forever)."""
    import ray

    have = ray.cluster_resources()
    short = [f"{need:g} {kind} (cluster has {have.get(kind, 0):g})" for kind, need in (("CPU", need_cpu), ("GPU", need_gpu))
             if need > have.get(kind, 0) + 1e-9]
    if not short:
        return
    msg = f"the run needs {' and '.join(short)}: {what}"
    if cfg.resources.address or os.environ.get("RAY_ADDRESS"):
        log.warning("%s; waiting for the cluster to scale up", msg)  # an autoscaling cluster may add nodes
    else:
        raise ValueError(f"{msg}; on a local Ray set resources.local_num_cpus (logical CPUs) or lower those fields")


def tune_callbacks() -> list:
    """Inside a Ray Tune trial, forward every ``ray.train.report`` to Tune (its schedulers read them)."""
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    if not _in_tune_session():
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars would interleave with the workers' epoch lines."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
