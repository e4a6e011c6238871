"""``hierclr sweep``: Ray Tune over training runs (pretrain, finetune or hcal), one nested MLflow run per trial.

Composition (Ray Train V2's recommended way): a *function trainable* (:func:`run_trial`) builds the trial's
config (the sweep's ``command`` picks :class:`~hierclr.config.pretrain.PretrainConfig` or
:class:`~hierclr.config.supervised.SupervisedConfig`, :mod:`hierclr.config.jobs`) from the sampled
params and calls the one driver (:func:`~hierclr.runtime.driver.run_training`), whose ``TorchTrainer`` carries Tune's ``TuneReportCallback`` so
every epoch's report reaches Tune (ASHA reads ``epochs_done`` and the sweep's metric from it). Each trial is a
full pretraining run with its own Train workers, data streams and clustering actors, named after the trial
id; the trial's own driver process takes ``trial_cpus`` (0.01 by default: it only waits).

MLflow: the sweep driver creates the experiment (named after the sweep) and a parent run holding the search
space; each trial logs into a child run (tag ``mlflow.parentRunId``) found again by a run key on resume, so
an interrupted and resumed sweep never duplicates runs. At the end the driver sets every child's final status
(a trial the scheduler stopped early ends itself at that epoch, see :mod:`hierclr.runtime.early_stop`, and is
FINISHED with tag ``hierclr.sweep.status=stopped_early``; one that raised is FAILED), and logs to the parent the summary table, a plot of the metric against every swept parameter, the
best trial's metric and its config, which is also written to ``<sweep dir>/best_config.yaml`` for
``hierclr <command> --config``.

Directory layout: ``<storage_path>/<name>/`` is the Tune experiment (``hierclr sweep --resume`` restores it);
``<storage_path>/<name>/runs/`` holds the trials' Ray Train runs and checkpoints; ``summary/`` the summary.
"""
from __future__ import annotations

import logging
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hierclr.config.loader import flatten
from hierclr.config.pretrain import PretrainConfig
from hierclr.config.sections import TrackingSection
from hierclr.config.sweep import SweepConfig, warmup_epochs
from hierclr.runtime import console
from hierclr.runtime.sweep_summary import (
    TrialRow,
    best_trial,
    clip_error,
    score_history,
    table_csv,
    table_text,
    tied_with,
)

log = logging.getLogger(__name__)

PARENT_KEY = "sweep:{dir}"
TRIAL_KEY = "sweep:{dir}/trial:{trial}"


@dataclass
class SweepResult:
    sweep_dir: str
    rows: list[TrialRow]
    best: TrialRow | None
    best_config: str | None
    parent_run_id: str | None
    interrupted: bool


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (plain values: Tune ships it to the trial actors)."""

    sweep: dict
    sweep_dir: str
    tracking: dict
    parent_run_id: str | None
    stop_board: str | None = None
    verbose: bool = False  # hierclr -v on the sweep's command line (the trial is its Train run's driver)


def _short_params(params: dict[str, Any]) -> str:
    def fmt(v):
        return "-".join(str(x) for x in v) if isinstance(v, (list, tuple)) else (f"{v:.4g}" if isinstance(v, float)
                                                                                 else str(v))
    return " ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in params.items())


def trial_run_config(sweep: SweepConfig, params: dict[str, Any], *, trial_id: str, sweep_dir: str,
                          tracking: dict) -> PretrainConfig:
    """The trial's config (pretrain, finetune or hcal): base + params, named after the trial, storing under the
    sweep, logging to the sweep's MLflow experiment."""
    cfg = sweep.trial_config(params)
    return cfg.model_copy(update={
        "name": f"{sweep.name}-{trial_id}",
        "checkpoint": cfg.checkpoint.model_copy(update={"storage_path": f"{sweep_dir}/runs"}),
        "tracking": TrackingSection.model_validate({**cfg.tracking.model_dump(), **tracking}),
    })


def run_trial(params: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial = one training run (resumed from its own checkpoints when Tune restarts it)."""
    from ray import tune

    from hierclr.io.checkpoint import latest_run
    from hierclr.runtime.driver import run_training
    from hierclr.runtime.runs import TrackingLink

    trial_id = tune.get_context().get_trial_id()
    console.setup(ctx.verbose)  # this process drives the trial's Train run: the same console as the sweep's
    sweep = SweepConfig.model_validate(ctx.sweep)
    link = TrackingLink(parent_run_id=ctx.parent_run_id,
                        run_key=TRIAL_KEY.format(dir=ctx.sweep_dir, trial=trial_id),
                        run_name=f"{trial_id} {_short_params(params)}",
                        tags={"hierclr.sweep": sweep.name, "hierclr.trial_id": trial_id},
                        stop_board=ctx.stop_board, stop_key=trial_id)
    cfg = None
    try:
        cfg = trial_run_config(sweep, params, trial_id=trial_id, sweep_dir=ctx.sweep_dir, tracking=ctx.tracking)
        root = cfg.checkpoint.storage_path
        resume = "latest" if Path(root).is_dir() and latest_run(root, cfg.name) else None
        run_training(cfg, resume=resume, link=link, echo=print)
    except BaseException as err:
        _record_trial_failure(ctx, link, cfg, params, err)
        raise


def _record_trial_failure(ctx: TrialContext, link, cfg: PretrainConfig | None, params: dict, err: BaseException) -> None:
    """A trial that failed before (or after) its MLflow run existed still gets a FAILED child run with the
    error, so the MLflow UI shows every trial of the sweep."""
    from hierclr.runtime.tracking import Tracker

    tracking = TrackingSection.model_validate(ctx.tracking)
    tags = {**link.tags, "hierclr.error": f"{type(err).__name__}: {err}"}
    if link.parent_run_id:
        tags["mlflow.parentRunId"] = link.parent_run_id
    try:
        tracker = Tracker.start(tracking, run_name=link.run_name, params=cfg if cfg is not None else params,
                                tags=tags, run_key=link.run_key)
        tracker.log_text("".join(traceback.format_exception(err)), "error.txt")
        tracker.finish("FAILED")
    except Exception:  # recording the failure must not hide the failure itself
        log.exception("could not record the failed trial in MLflow")


# ---------------------------------------------------------------------------------------------- driver
def sweep_dir_of(sweep: SweepConfig) -> str:
    return str(Path(os.path.expanduser(sweep.storage_path)).resolve() / sweep.name)


def _tracking_for(sweep: SweepConfig, cfg0: PretrainConfig) -> dict:
    from hierclr.runtime.tracking import resolved_uri

    experiment = sweep.set.get("tracking.experiment") or sweep.name  # one MLflow experiment per sweep
    return {**cfg0.tracking.model_dump(), "uri": resolved_uri(cfg0.tracking), "experiment": experiment}


def _parent_params(sweep: SweepConfig) -> dict[str, Any]:
    """The parent run's params: the sweep's options (a FIFO sweep's scheduler is its type only), ``set.*`` and
    ``space.*``."""
    options = {k: v for k, v in sweep.model_dump(mode="json").items() if k not in ("space", "set")}
    if sweep.scheduler.type == "fifo":
        options["scheduler"] = {"type": "fifo"}  # ASHA's grace period etc. do nothing here
    else:
        options["scheduler"]["grace_period"] = sweep.asha_grace_period()  # the default resolved
    params = flatten(options)
    params.update({f"set.{k}": v for k, v in sweep.set.items()})
    params.update({f"space.{k}": d.describe() for k, d in sweep.space.items()})
    return params


def run_sweep(sweep: SweepConfig, *, resume: bool = False, retry_failed: bool = False, echo=print) -> SweepResult:
    """Run (or resume) the sweep; returns the per-trial summary, the best trial and where its config went."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from hierclr.runtime.early_stop import CooperativeASHA, board_name, close_board, get_board
    from hierclr.runtime.runs import start_ray as _start_ray
    from hierclr.runtime.tracking import Tracker

    cfg0 = sweep.validate_space()  # every listed value, before Ray starts
    sweep_dir = sweep_dir_of(sweep)
    exists = Path(sweep_dir).is_dir() and tune.Tuner.can_restore(sweep_dir)
    if resume and not exists:
        raise ValueError(f"--resume: no sweep to resume at {sweep_dir}")
    if not resume and exists:
        raise ValueError(f"a sweep named {sweep.name!r} already exists at {sweep_dir}: resume it with --resume, or "
                         f"start a new one with another name (--set name=...)")
    _start_ray(cfg0)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # kNN (the usual metric) is not in every epoch's report
    tracking = _tracking_for(sweep, cfg0)
    tcfg = TrackingSection.model_validate(tracking)
    parent = Tracker.start(tcfg, run_name=sweep.name, params=_parent_params(sweep),
                           tags={"hierclr.sweep": sweep.name, "hierclr.sweep_dir": sweep_dir, "hierclr.kind": "sweep"},
                           run_key=PARENT_KEY.format(dir=sweep_dir))
    parent.log_text(sweep.to_yaml(), "sweep/space.yaml")
    parent_run_id = parent.run_id  # (a finished tracker forgets it)
    board = board_name(sweep_dir) if sweep.scheduler.type == "asha" else None
    if board:
        get_board(board)
    ctx = TrialContext(sweep=sweep.model_dump(mode="json"), sweep_dir=sweep_dir, tracking=tracking,
                       parent_run_id=parent_run_id, stop_board=board, verbose=console.verbose())
    concurrent = _concurrency(sweep, cfg0, echo)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"CPU": sweep.trial_cpus})
    max_t = sweep.max_t(cfg0)
    echo(f"hierclr sweep: {sweep.name}, {sweep.num_trials} trial(s) of {sweep.base} ({max_t} epochs each), "
         f"metric {sweep.metric} ({sweep.mode}), scheduler {sweep.scheduler.type}; experiment {sweep_dir}; "
         f"MLflow {'parent run ' + parent.run_id + ' at ' + tcfg.uri if parent.enabled else 'off'}")
    try:
        if resume:
            tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True,
                                       resume_errored=retry_failed, restart_errored=False)
        else:
            scheduler = (CooperativeASHA(board=board, time_attr=sweep.scheduler.time_attr, max_t=max_t,
                                         grace_period=sweep.asha_grace_period(),
                                         reduction_factor=sweep.scheduler.reduction_factor,
                                         brackets=sweep.scheduler.brackets)
                         if board else FIFOScheduler())
            tuner = tune.Tuner(
                trainable,
                param_space={k: d.to_tune() for k, d in sweep.space.items()},
                tune_config=tune.TuneConfig(
                    metric=sweep.metric, mode=sweep.mode, scheduler=scheduler, num_samples=sweep.num_samples,
                    # Tune ignores TuneConfig.max_concurrent_trials when a generator is passed: limit it here
                    search_alg=BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrent),
                    trial_dirname_creator=lambda t: t.trial_id),
                run_config=tune.RunConfig(name=sweep.name, storage_path=str(Path(sweep_dir).parent),
                                          failure_config=tune.FailureConfig(max_failures=0),
                                          **console.tune_run_options(sweep.metric, list(sweep.space))),
            )
        grid = tuner.fit()
    except BaseException:
        parent.finish("FAILED")
        raise
    finally:
        if board:
            close_board(board)
    rows = _rows(grid, sweep, tcfg, sweep_dir, max_t)
    interrupted = any(r.status == "UNFINISHED" for r in rows)
    _finalize_children(rows, tcfg, sweep.metric)
    best = best_trial(rows, sweep.mode)
    best_path = _write_summary(sweep, rows, best, sweep_dir, parent, echo, final=not interrupted)
    if interrupted:
        echo(f"hierclr sweep: interrupted with {sum(r.status == 'UNFINISHED' for r in rows)} unfinished trial(s); "
             f"continue with: hierclr sweep --space <file> --resume")
        parent.set_tags({"hierclr.sweep.status": "interrupted"})
        parent.finish("KILLED")
    else:
        parent.set_tags({"hierclr.sweep.status": "finished"})
        parent.finish("FINISHED" if best is not None else "FAILED")
    return SweepResult(sweep_dir=sweep_dir, rows=rows, best=best, best_config=best_path,
                       parent_run_id=parent_run_id,
                       interrupted=interrupted)


def _concurrency(sweep: SweepConfig, cfg0: PretrainConfig, echo) -> int:
    """How many trials may run at once. Each trial's driver takes only ``trial_cpus``, so Tune would start
    more trials than the cluster can train: their Train worker groups then compete for the same CPUs/GPUs
    and (measured here with 2 trials on 4 CPUs) one of them may wait forever holding a half-placed worker
    group. On a fixed-size cluster (local Ray) the count is capped at what fits; on a cluster given by
    address, which may autoscale, the configured count is kept with a warning when it does not fit now."""
    import ray

    from hierclr.runtime.driver import run_needs

    need_cpu, need_gpu = run_needs(cfg0)
    need_cpu += sweep.trial_cpus
    have = ray.cluster_resources()
    fits = int((have.get("CPU", 0) + 1e-9) // need_cpu) if need_cpu else sweep.num_trials
    if need_gpu:
        fits = min(fits, int((have.get("GPU", 0) + 1e-9) // need_gpu))
    want = sweep.max_concurrent_trials or sweep.num_trials
    if want <= fits:
        return want
    autoscaling = bool(cfg0.resources.address or os.environ.get("RAY_ADDRESS"))
    if autoscaling:
        log.warning("max_concurrent_trials=%d but the cluster holds %d trial(s) now (%.3g CPUs, %g GPUs each); "
                    "the rest wait for the cluster to scale up", want, fits, need_cpu, need_gpu)
        return want
    if fits < 1:
        raise ValueError(f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs, the local Ray has "
                         f"{have.get('CPU', 0):g} / {have.get('GPU', 0):g}: raise resources.local_num_cpus (in `set`) "
                         f"or lower the trial's resources")
    echo(f"hierclr sweep: {fits} trial(s) at a time fit this Ray ({have.get('CPU', 0):g} CPUs; a trial needs "
         f"{need_cpu:.3g}), not max_concurrent_trials={want}")
    return fits


def _rows(grid, sweep: SweepConfig, tcfg: TrackingSection, sweep_dir: str, max_t: int) -> list[TrialRow]:
    """One row per trial from Tune's results: params, status, epochs done, its score (the sweep's scope, warm-up
    epochs left out when ``skip_warmup``) and the epoch it was read at."""
    from hierclr.runtime.tracking import find_run

    base = sweep.base_tree() if sweep.skip_warmup else None
    rows = []
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        df = r.metrics_dataframe
        epochs, values = 0, []
        if df is not None and len(df):
            if "epochs_done" in df:
                epochs = int(df["epochs_done"].max())
            if sweep.metric in df and "epoch" in df:
                values = [(int(e), float(v)) for e, v in zip(df["epoch"], df[sweep.metric])
                          if not math.isnan(v)]
        params = {k: (r.config or {}).get(k) for k in sweep.space}
        # (a trial that failed may have failed building its config: its warm-up is not needed, it never wins)
        warmup = warmup_epochs(sweep.trial_config(params, base)) if base is not None and r.error is None else 0
        score_epoch, score = score_history(values, sweep.mode, sweep.scope, warmup)
        done = bool((r.metrics or {}).get("done"))
        if r.error is not None:
            status = "FAILED"
        elif epochs >= max_t:
            status = "FINISHED"
        elif done:
            status = "STOPPED"
        else:
            status = "UNFINISHED"
        rows.append(TrialRow(trial_id=trial_id, params=params, status=status, epochs=epochs, score=score,
                             score_epoch=score_epoch, extra={"warmup_epochs": warmup},
                             error=None if r.error is None else clip_error(f"{type(r.error).__name__}: {r.error}"),
                             mlflow_run_id=find_run(tcfg, TRIAL_KEY.format(dir=sweep_dir, trial=trial_id))))
    rows.sort(key=lambda row: row.trial_id)
    return rows


def _finalize_children(rows: list[TrialRow], tcfg: TrackingSection, metric: str) -> None:
    """Give every child run the final status of its trial, a tag saying how it ended (an interrupted trial's
    process was killed before it could end its MLflow run itself) and its score as ``score/<metric>`` (at the
    epoch it was read at: the value the parent's ``best/<metric>`` is compared on)."""
    from hierclr.runtime.tracking import Tracker

    status_of = {"FINISHED": "FINISHED", "STOPPED": "FINISHED", "FAILED": "FAILED", "UNFINISHED": "KILLED"}
    tag_of = {"FINISHED": "finished", "STOPPED": "stopped_early", "FAILED": "failed", "UNFINISHED": "interrupted"}
    for row in rows:
        if row.mlflow_run_id is None:
            continue
        child = Tracker.attach(tcfg, row.mlflow_run_id)
        child.set_tags({"hierclr.sweep.status": tag_of[row.status], "hierclr.sweep.epochs": row.epochs,
                        "hierclr.sweep.metric": metric})
        if row.score is not None and row.status != "UNFINISHED":
            child.log_metrics(row.score_epoch, {f"score/{metric}": row.score})
        if child.status() != status_of[row.status]:  # an ended run keeps its end time (a resumed sweep)
            child.finish(status_of[row.status])


def _write_summary(sweep: SweepConfig, rows: list[TrialRow], best: TrialRow | None, sweep_dir: str, parent,
                   echo, *, final: bool = True) -> str | None:
    """Print the table; write it (text, CSV, JSON), the metric-vs-params plot and the best config under
    ``<sweep dir>/summary`` and log them to the parent run; warn when another trial ties with the best. Only a
    ``final`` summary (not an interrupted sweep's) logs ``best/<metric>``, at step = the number of completed
    trials, so a resumed sweep's best supersedes an earlier one in the MLflow UI. Returns the best config's path."""
    from hierclr.viz.plots import metric_vs_params

    params = list(sweep.space)
    out = Path(sweep_dir, "summary")
    out.mkdir(parents=True, exist_ok=True)
    text = table_text(rows, sweep.metric, params, sweep.scope)
    echo(f"hierclr sweep: {sweep.name}\n{text}")
    (out / "trials.txt").write_text(text + "\n")
    (out / "trials.csv").write_text(table_csv(rows, sweep.metric, params))
    import json

    (out / "trials.json").write_text(json.dumps([r.as_dict(sweep.metric) for r in rows], indent=1, default=str))
    plot_rows = [{"trial": r.trial_id, "status": r.status, "params": r.params, sweep.metric: r.score} for r in rows]
    metric_vs_params(plot_rows, sweep.metric, params, out / "metric_vs_params.png", mode=sweep.mode)
    best_path = None
    if best is not None:
        cfg = sweep.trial_config(best.params)
        cfg = cfg.model_copy(update={"name": f"{sweep.name}-best"})
        best_path = str(out / "best_config.yaml")
        header = (f"# best trial {best.trial_id} of sweep {sweep.name}: {sweep.metric} = {best.score:.6g} "
                  f"(scope {sweep.scope}, epoch {best.score_epoch}); params {best.params}\n")
        Path(best_path).write_text(header + cfg.to_yaml())
        echo(f"hierclr sweep: best trial {best.trial_id} {sweep.metric}={best.score:.4f} ({sweep.scope}) "
             f"{best.params}; config written to {best_path}")
        ties = tied_with(rows, best)
        if ties:
            echo(f"hierclr sweep: warning: trials {', '.join([best.trial_id, *(r.trial_id for r in ties)])} tie at "
                 f"{sweep.metric}={best.score:.6g} ({sweep.scope}); {best.trial_id} was picked as the first listed")
        if final:
            completed = sum(r.status in ("FINISHED", "STOPPED") for r in rows)
            parent.log_metrics(completed, {f"best/{sweep.metric}": best.score})
        parent.set_tags({"hierclr.best_trial": best.trial_id, "hierclr.best_run_id": best.mlflow_run_id or "",
                         "hierclr.best_tied_with": ",".join(r.trial_id for r in ties),
                         **{f"hierclr.best.{k}": v for k, v in best.params.items()}})
    else:
        echo("hierclr sweep: no trial reported the metric; no best config")
    parent.log_artifact(out, "summary")
    return best_path
