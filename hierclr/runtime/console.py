"""What a hierclr command prints, set in one place before Ray starts.

Quiet by default: Ray's start line, hierclr's header, one line per epoch, the summary, and warnings; ``hierclr -v``
leaves every Ray library's console output as Ray prints it (and hierclr's INFO logs). Each switch is Ray's own:

- ``RAY_TRAIN_ENABLE_PRINT_PATCH=0``: Ray Train V2 turns a worker's ``print`` into a log record (stderr) and, as
  Ray wraps the worker's stdout, prints it on stdout too: every epoch line came twice. Train propagates this
  variable from the driver to its controller and workers itself.
- ``RAY_AIR_NEW_OUTPUT=0``: Tune's classic ``CLIReporter`` (:func:`tune_run_options`: a table with chosen columns)
  instead of the new output's boxes of every metric of every trial.
- ``ray.train.LoggingConfig(log_level=...)`` (:func:`train_log_level`): Train's ``Reporting training result``
  dump of every metric, per epoch and worker, is INFO.
- ``RAY_DATA_LOGGING_CONFIG`` (``ray_data_logging.yaml``): Ray Data's console at WARNING, and its "Progress bars
  disabled" notice (hierclr disables the bars, which would interleave with the epoch lines) to its log file only;
  read by every process a local Ray starts (a cluster's workers keep Ray Data's default).
- On a Train worker Train sets the root logger to INFO, so any library's INFO records reach the console:
  :func:`quiet_worker` puts it back to WARNING once the loop starts, and Ray's ``worker_process_setup_hook``
  (:func:`ray_runtime_env`) sets faiss's logger to WARNING in every worker process before hierclr's modules import
  faiss (its CPU-feature lines, 8 per worker).
- ``MLFLOW_LOGGING_LEVEL=WARNING``: MLflow's INFO lines ("Creating initial MLflow database tables", ...).
- The driver's "Token authentication is enabled" notice (Ray's default for a new local Ray, said on every command)
  stays in Ray's log.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

VERBOSE_ENV = "HIERCLR_VERBOSE"
QUIET_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_AIR_NEW_OUTPUT": "0", "MLFLOW_LOGGING_LEVEL": "WARNING",
             "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml"))}
QUIET_LOGGERS = ("ray._private.authentication.authentication_token_setup",)


def setup(verbose: bool) -> None:
    """The driver's logging and the environment Ray reads (a value the user set is kept)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def train_log_level() -> str:
    """Ray Train's console level for its own ``ray.train`` records (``RunConfig(logging_config=...)``)."""
    return "INFO" if verbose() else "WARNING"


def quiet_worker(verbose_run: bool) -> None:
    """On a Ray Train worker, after Train configured its logging: library INFO records stay in Train's log files."""
    if not verbose_run:
        logging.getLogger().setLevel(logging.WARNING)


def ray_runtime_env() -> dict:
    """``ray.init(runtime_env=...)``: quiet every worker process of the job from its start (none with ``-v``)."""
    return {} if verbose() else {"worker_process_setup_hook": "hierclr.runtime.console.quiet_worker_process"}


def quiet_worker_process() -> None:
    """Ray's ``worker_process_setup_hook``: runs in each worker process before any task or actor."""
    logging.getLogger("faiss").setLevel(logging.WARNING)


def tune_run_options(metric: str, params: list[str]) -> dict:
    """``tune.RunConfig`` options for a sweep: Tune's table (each trial's status, its swept params, epochs done and
    the sweep's metric) at most once a minute and at the end; none (Tune's default output) with ``-v`` or when
    Tune's new output is on (it ignores a reporter)."""
    if verbose() or os.environ.get("RAY_AIR_NEW_OUTPUT") != "0":
        return {}
    from ray.tune import CLIReporter

    reporter = CLIReporter(metric_columns={"epochs_done": "epochs", metric: metric},
                           parameter_columns={p: p.split(".")[-1] for p in params}, max_report_frequency=60,
                           print_intermediate_tables=True)
    return {"progress_reporter": reporter, "verbose": 1}  # 1: status tables only, no per-result dumps


def interrupted_line(command: str, resume: str | None) -> str:
    """The one line a Ctrl-C ends a command with."""
    return f"hierclr {command}: interrupted" + (f"; resume with: {resume}" if resume else "")
