"""What every training driver (pretrain, finetune, hcal) does the same way on the Ray driver: start or join Ray,
place the run directory, resume, check that the cluster can hold the run, join a sweep's MLflow tree.

Run directories: ``<checkpoint.storage_path>/<name>-<YYYYmmdd-HHMMSS>`` per invocation, ``-2``, ``-3``, ... added
when that directory exists already (two runs started in the same second); a local directory is created at once
(``mkdir`` is atomic: two starts never share one). ``resume="latest"`` reuses the newest run directory of the
same ``name``, ``resume=<run directory name>`` (e.g. ``demo-20261204-193450-2``) that one (Ray Train restores its
latest checkpoint and the same MLflow run continues); ``resume=PATH`` starts a new run directory from a
checkpoint (or the newest checkpoint of a run directory) and also continues the MLflow run recorded in it.
A local run directory is locked (:class:`~hierclr.io.run_lock.RunLock`) from here to the end of the run, before
its checkpoints are read, so a second process is refused instead of training the same epochs again.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from hierclr.io.checkpoint import (
    check_ray_latest,
    latest_checkpoint,
    latest_run,
    quarantine_broken,
    read_state_json,
)
from hierclr.io.run_lock import RunLock

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


def check_data_paths(cfg) -> None:
    """``data.train`` / ``data.val`` exist (before Ray starts and before a run directory or MLflow run exists);
    ``builtin://`` datasets are written on demand and pass."""
    from hierclr.data.builtin import is_builtin
    from hierclr.io.fs import resolve

    for field_name in ("train", "val"):
        uri = getattr(cfg.data, field_name, None)
        if uri and not is_builtin(uri) and not resolve(uri).exists():
            raise ValueError(f"data.{field_name}: {uri} does not exist")


def check_row_count(cfg, plan) -> None:
    """``data.train``'s row count against what the run needs (:meth:`~hierclr.methods.base.Plan.check_rows`:
    one global batch, the finest level's prototypes), before Ray starts when the format gives the count without
    Ray and without reading an image (a parquet manifest, an ImageFolder listing). WebDataset tars are counted by
    their index pass on Ray, and ``plan.prepare`` checks them there (before any actor or MLflow run)."""
    from hierclr.data.source import count_rows

    num_rows = count_rows(data_path(cfg.data.train, cfg), format=cfg.data.format)
    if num_rows is not None:
        plan.check_rows(num_rows)


def start_ray(cfg) -> None:
    import ray

    from hierclr.runtime.ray_start import ensure_ray

    if ray.is_initialized():
        return
    if cfg.resources.address:
        from hierclr.runtime.console import ray_runtime_env

        ray.init(address=cfg.resources.address, log_to_driver=True, runtime_env=ray_runtime_env())
    else:
        ensure_ray(cfg.resources.local_num_cpus)


@dataclass
class ResolvedRun:
    """Where a run goes: its name, the checkpoint to load when Ray has none and its state.json, whether this
    invocation created the directory, and the run's lock (None for a remote storage path)."""

    name: str
    fresh: bool
    lock: RunLock | None
    checkpoint: str | None = None
    state: dict | None = None


def _remote(root: str) -> bool:
    return root.startswith(("s3://", "gs://"))


def new_run_dir(root: str, name: str) -> tuple[str, RunLock | None]:
    """Create ``<root>/<name>-<time>`` (``-2``, ``-3``, ... when taken) and lock it; remote roots: the name only."""
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if _remote(root):
        return base, None
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            candidate = base if n == 1 else f"{base}-{n}"
            try:
                os.mkdir(Path(root, candidate))
            except FileExistsError:
                continue
            return candidate, RunLock.acquire(Path(root, candidate))
    except OSError as e:  # read-only, full, not a directory: said before Ray or MLflow start
        raise ValueError(f"checkpoint.storage_path {root} is not writable: {e.strerror or e} "
                         f"({e.filename or root}); no run was started") from None
    raise RuntimeError(f"no free run directory name {base}-<n> under {root}")


def resolve_run(cfg, root: str, resume: str | None) -> ResolvedRun:
    """Name, lock and starting checkpoint of a run (see the module docstring)."""
    if resume is None:
        name, lock = new_run_dir(root, cfg.name)
        return ResolvedRun(name, True, lock)
    by_name = resume != "latest" and "/" not in resume and not _remote(root) and Path(root, resume).is_dir()
    if resume == "latest" or by_name:
        name = latest_run(root, cfg.name) if resume == "latest" else resume
        if name is None:
            raise ValueError(f"--resume latest: no run named {cfg.name!r} with a checkpoint under {root}")
        run_dir = Path(root, name)
        lock = RunLock.acquire(run_dir)
        try:
            check_ray_latest(run_dir)
            quarantine_broken(run_dir)  # this process holds the run now: nothing else is writing it
            ckpt = latest_checkpoint(run_dir)
            return ResolvedRun(name, False, lock, str(ckpt), read_state_json(ckpt))
        except BaseException:
            lock.release()
            raise
    ckpt = latest_checkpoint(resume)  # before a directory is made: a bad PATH leaves nothing behind
    state = read_state_json(ckpt)
    name, lock = new_run_dir(root, cfg.name)
    return ResolvedRun(name, True, lock, str(ckpt), state)


def remove_if_empty(root: str, run: ResolvedRun) -> bool:
    """After a failed fresh run: remove its directory when it holds no checkpoint (nothing to resume from), so
    no empty run folder is left; returns whether it did."""
    import shutil

    if not run.fresh or _remote(root):
        return False
    run_dir = Path(root, run.name)
    if not run_dir.is_dir() or any(d.is_dir() and d.name.startswith("checkpoint_") for d in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


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
