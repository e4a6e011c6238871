"""The one training driver: config -> data streams -> services -> MLflow run -> Ray Train -> final artifacts.

``run_training(cfg)`` is what ``hierclr pretrain``, ``hierclr finetune``, ``hierclr hcal``, the sweep's trials and
``hierclr evaluate``'s trained protocols call. It runs on the Ray driver (a laptop with a local Ray, or the head
node under ``ray job submit``); the training itself runs in :func:`hierclr.runtime.worker.train_loop_per_worker`
on the Ray Train workers. What differs between methods is asked of the config's
:class:`~hierclr.methods.base.Plan`: which streams, which checks, which services, which tags and artifacts.

Run directories and ``resume`` work as :mod:`hierclr.runtime.runs` describes.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from hierclr.config.loader import flatten
from hierclr.io.checkpoint import checkpoints_in, load_checkpoint
from hierclr.methods import plan_for
from hierclr.runtime import console
from hierclr.runtime.runs import (
    ResolvedRun,
    TrackingLink,
    check_data_paths,
    check_resources,
    check_resume_config,
    check_row_count,
    quiet_ray_data,
    remove_if_empty,
    resolve_run,
    start_ray,
    storage_root,
    tune_callbacks,
)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where a run went and what it recorded (its last checkpoint's history and best)."""

    run_dir: str
    checkpoint: str | None
    history: list[dict]
    best: dict | None
    mlflow_run_id: str | None
    bad_images: list = field(default_factory=list)


def unique_bad_images(streams: dict) -> list:
    """The undecodable images of a run, each id once: the train and embed streams read the same source and
    meet the same bad images (they used to be reported twice)."""
    seen: dict = {}
    for name in ("train", "embed"):
        if name in streams:
            for b in streams[name].bad_images():
                seen.setdefault(b.id, b)
    return [seen[i] for i in sorted(seen)]


def run_needs(cfg) -> tuple[float, float]:
    """(CPUs, GPUs) one run holds while it trains: Train workers, the data streams' budget, the method's actors."""
    return plan_for(cfg).needs()


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``resumable_run``: the run's name when it has a checkpoint to resume from, else None."""

    def __init__(self, resumable_run: str | None) -> None:
        super().__init__(resumable_run)
        self.resumable_run = resumable_run


class RunFailedError(RuntimeError):
    """A training run ended with an error. The message names the cause and, when the run has an intact checkpoint,
    the run to resume (``--resume <run_name>``); the fields carry the same for callers (the CLI prints the whole
    command)."""

    def __init__(self, command: str, cause: str, run_name: str, run_dir: str, checkpoint: str | None,
                 epoch: int | None) -> None:
        self.command, self.cause, self.run_name, self.run_dir = command, cause, run_name, run_dir
        self.checkpoint, self.epoch = checkpoint, epoch
        where = (f"its last checkpoint is epoch {epoch}'s ({checkpoint}): continue the run with "
                 f"`hierclr {command} <the same --config/--set> --resume {run_name}`" if checkpoint is not None
                 else "it wrote no checkpoint: nothing to resume, start it again")
        super().__init__(f"run {run_name} failed: {cause}\n{where}")

    def __reduce__(self):  # survives Ray's pickling (a sweep trial)
        return (self.__class__, (self.command, self.cause, self.run_name, self.run_dir, self.checkpoint, self.epoch))


def failure_cause(err: BaseException, limit: int = 1500) -> str:
    """``Type: message`` of what actually failed: the first failing worker's own exception inside Ray Train's
    ``WorkerGroupError`` (lowest rank), the controller's inside ``ControllerError``, the original error inside a
    ``RayTaskError``; the message cut at ``limit`` characters."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        err = failures[min(failures)]
    err = getattr(err, "controller_failure", None) or err
    cause = getattr(err, "cause", None)  # RayTaskError / RayActorError: the user's exception
    err = cause if isinstance(cause, BaseException) else err  # (RunFailedError.cause is its text)
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:  # a remote traceback in the message: keep its last line
        lines = [ln for ln in text.splitlines() if ln.strip()]
        text = lines[-1].strip() if lines else text
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_training(cfg, *, resume: str | None = None, stop_after_epoch: int | None = None, echo=print,
                 link: TrackingLink | None = None) -> RunResult:
    """Run (or resume) one training run of any method; returns where it went and its per-epoch history.

    Before Ray starts: the data paths and ``data.train``'s row count are checked, then the run directory is created
    (or, on resume, found) and locked, which also proves the storage writable. A run that fails raises
    :class:`RunFailedError` (its MLflow run FAILED with the cause in the tag ``hierclr.error``); a fresh run that
    failed before its first checkpoint leaves no directory behind."""
    plan = plan_for(cfg)
    root = storage_root(cfg)
    command = "pretrain" if plan.name == "contrastive" else cfg.task
    check_data_paths(cfg)  # before Ray, a run directory or an MLflow run: a typo costs seconds, leaves nothing
    check_row_count(cfg, plan)
    where = resolve_run(cfg, root, resume)
    attempt = _Attempt()
    try:
        return _train(cfg, plan, where, root, stop_after_epoch, echo, link, command, attempt)
    except BaseException as err:
        tracker = attempt.tracker
        if not isinstance(err, Exception):  # Ctrl-C, SystemExit: the run was stopped, not failed
            if tracker is not None:
                tracker.finish("KILLED")
            if isinstance(err, KeyboardInterrupt) and not isinstance(err, RunInterrupted):
                found = [] if root.startswith(("s3://", "gs://")) else checkpoints_in(f"{root}/{where.name}")
                raise RunInterrupted(where.name if found else None) from err
            raise
        if isinstance(err, ValueError) and tracker is None:
            raise  # a bad config or input found before any MLflow run: one clear line from the CLI
        cause = failure_cause(err)
        if tracker is not None:
            tracker.set_tags({"hierclr.error": cause})
            tracker.finish("FAILED")
        run_dir = f"{root}/{where.name}"
        found = [] if root.startswith(("s3://", "gs://")) else checkpoints_in(run_dir)
        raise RunFailedError(command, cause, where.name, run_dir, str(found[-1][1]) if found else None,
                             found[-1][0] if found else None) from err
    finally:
        if not attempt.done:
            remove_if_empty(root, where)
        if where.lock is not None:
            where.lock.release()


@dataclass
class _Attempt:
    """What the failure handling of :func:`run_training` needs from a run that got part of the way."""

    tracker: object | None = None  # the MLflow run's tracker, once it exists
    done: bool = False


def _train(cfg, plan, where: ResolvedRun, root: str, stop_after_epoch, echo, link, command: str,
           attempt: _Attempt) -> RunResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hierclr.data import train_data_config
    from hierclr.data.streams import start_epoch_clock
    from hierclr.runtime.context import RunContext
    from hierclr.runtime.tracking import Tracker, log_datasets, resolved_uri
    from hierclr.runtime.worker import train_loop_per_worker

    run_name, resume_ckpt, resume_state = where.name, where.checkpoint, where.state
    run_dir = f"{root}/{run_name}"
    if resume_ckpt:
        check_resume_config(cfg, resume_ckpt, plan.resume_sections)
    start_ray(cfg)
    start_epoch = int(resume_state["epoch"]) + 1 if resume_state else 0

    # ---- data, checks
    quiet_ray_data()
    prepared = plan.prepare(start_epoch)
    streams = prepared.streams
    check_resources(cfg, *plan.needs(), plan.needs_what)

    # ---- services: epoch clock, the method's actors, MLflow run
    token = uuid.uuid4().hex[:8]
    clock_name = f"hierclr-clock-{token}"
    clock = start_epoch_clock(clock_name, start_epoch)
    streams["train"].use_epoch_clock(clock_name)
    # Unit (read-block) order is reseeded by Ray per execution; continue its count where the run stopped.
    streams["train"].dataset.context._execution_idx = start_epoch
    try:
        service_fields = plan.start_services(token, prepared)
        tracking = cfg.tracking.model_copy(update={"uri": resolved_uri(cfg.tracking)})
        link = link or TrackingLink()
        tags = {"hierclr.run_dir": run_dir, **prepared.tags, "hierclr.train": cfg.data.train, **link.tags}
        if link.parent_run_id:
            tags["mlflow.parentRunId"] = link.parent_run_id  # what the MLflow UI nests runs by
        tracker = Tracker.start(tracking, run_name=link.run_name or run_name, params=flatten(cfg), tags=tags,
                                run_id=(resume_state or {}).get("mlflow_run_id"), run_key=link.run_key)
        attempt.tracker = tracker  # run_training records a failure in it
        if not (resume_state or {}).get("mlflow_run_id"):  # a new MLflow run: the datasets it reads
            log_datasets(tracker, cfg, prepared.streams)
        echo(f"hierclr {command}: run {run_name} ({prepared.header}); storage {run_dir}; "
             f"MLflow {'run ' + tracker.run_id + ' at ' + tracking.uri if tracker.enabled else 'off'}")

        run = RunContext(run_dir=run_dir, clock_name=clock_name, tracking_uri=tracking.uri,
                         mlflow_run_id=tracker.run_id, resume_from=resume_ckpt, stop_after_epoch=stop_after_epoch,
                         stop_board=link.stop_board, stop_key=link.stop_key, verbose=console.verbose(),
                         **prepared.run_fields, **service_fields)
        res = cfg.resources
        per_worker = {"CPU": res.cpus_per_worker}
        if res.use_gpu:
            per_worker["GPU"] = plan.worker_gpus()  # less than gpus_per_worker when actors share the GPUs
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"plan": plan.name, "config": cfg.model_dump(mode="json"), "run": run.__dict__},
            scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                         resources_per_worker=per_worker),
            datasets={name: s.dataset for name, s in streams.items()},
            dataset_config=train_data_config(("embed", "val")),
            run_config=RunConfig(name=run_name, storage_path=root,
                                 failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                                 logging_config=LoggingConfig(log_level=console.train_log_level()),
                                 callbacks=tune_callbacks()),
        )
        result = trainer.fit()
    finally:
        plan.stop_services()
        ray.kill(clock)
    mlflow_run_id = tracker.run_id
    bad = unique_bad_images(streams)
    ckpt_path = result.checkpoint.path if result.checkpoint is not None else None
    history, best = [], None
    if ckpt_path is not None:
        with result.checkpoint.as_directory() as d:
            state = load_checkpoint(d)
            history, best = state.history, state.best
            if tracker.enabled:
                plan.final_artifacts(tracker, state, run_dir, prepared, bad)
    tracker.finish("FINISHED")
    attempt.done = True
    if bad:
        echo(f"hierclr {command}: skipped {len(bad)} undecodable image(s), e.g. {bad[0]}")
    return RunResult(run_dir=run_dir, checkpoint=ckpt_path, history=history, best=best, mlflow_run_id=mlflow_run_id,
                     bad_images=bad)
