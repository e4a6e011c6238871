"""What a command prints (:mod:`hierclr.runtime.console`): Ray's switches set before Ray starts, quiet workers, Tune's
table, ``-v`` anywhere on the command line, and Ctrl-C as one line (no Ray started)."""
from __future__ import annotations

import logging

import pytest

from hierclr.runtime import console


@pytest.fixture
def clean_env(monkeypatch):
    for key in (console.VERBOSE_ENV, *console.QUIET_ENV):
        monkeypatch.setenv(key, "")  # recorded, so what a test sets is undone after it
        monkeypatch.delenv(key)
    return monkeypatch


def test_quiet_setup_sets_rays_switches_and_keeps_the_users(clean_env):
    clean_env.setenv("RAY_AIR_NEW_OUTPUT", "1")  # the user's choice wins
    console.setup(False)
    import os

    assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0" and os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert not console.verbose() and console.train_log_level() == "WARNING"


def test_verbose_setup_leaves_ray_as_it_is(clean_env):
    console.setup(True)
    import os

    assert not any(k in os.environ for k in console.QUIET_ENV)
    assert console.verbose() and console.train_log_level() == "INFO"
    assert console.tune_run_options("knn/top1_best", ["clustering.sizes"]) == {}


def test_a_quiet_worker_drops_library_info_records():
    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.INFO)  # what Ray Train sets on its workers
        console.quiet_worker(True)
        assert logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
        console.quiet_worker(False)
        assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
        assert logging.getLogger("hierclr.service").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(before)


def test_tune_table_has_the_chosen_columns(clean_env):
    from ray.tune import CLIReporter

    assert console.tune_run_options("knn/top1_best", ["clustering.sizes"]) == {}  # Tune's new output: no reporter
    console.setup(False)
    options = console.tune_run_options("knn/top1_best", ["clustering.sizes", "loss.temperature"])
    reporter = options["progress_reporter"]
    assert isinstance(reporter, CLIReporter) and options["verbose"] == 1
    assert reporter._metric_columns == {"epochs_done": "epochs", "knn/top1_best": "knn/top1_best"}
    assert reporter._parameter_columns == {"clustering.sizes": "sizes", "loss.temperature": "temperature"}


@pytest.mark.parametrize("argv, verbose", [(["pretrain"], False), (["-v", "pretrain"], True),
                                           (["pretrain", "-v"], True), (["sweep", "--verbose"], True)])
def test_v_before_or_after_the_verb(argv, verbose):
    from hierclr.cli import build_parser

    assert build_parser().parse_args(argv).verbose is verbose


@pytest.mark.parametrize("raised, line", [
    ("run", ("hierclr pretrain: interrupted; resume with: hierclr pretrain --config demo --set optim.epochs=2 "
             "--resume demo-20261204-230000")),
    ("none", "hierclr pretrain: interrupted"),  # no checkpoint yet: nothing to resume
    ("plain", "hierclr pretrain: interrupted"),
])
def test_ctrl_c_ends_with_one_line(clean_env, capsys, raised, line):
    from hierclr import cli
    from hierclr.commands import pretrain
    from hierclr.runtime.driver import RunInterrupted

    def run(_args):
        raise {"run": RunInterrupted("demo-20261204-230000"), "none": RunInterrupted(None),
               "plain": KeyboardInterrupt()}[raised]

    clean_env.setattr(pretrain, "run", run)
    assert cli.main(["pretrain", "--config", "demo", "--set", "optim.epochs=2"]) == 130
    out = capsys.readouterr()
    assert out.err == line + "\n" and out.out == ""


def test_a_run_interrupted_before_its_first_checkpoint_has_nothing_to_resume(clean_env, tmp_path):
    from hierclr.config.pretrain import load_config
    from hierclr.runtime import driver

    def interrupted(*_args):
        raise KeyboardInterrupt

    clean_env.setattr(driver, "_train", interrupted)
    cfg = load_config("demo", [f"checkpoint.storage_path={tmp_path}"])
    with pytest.raises(driver.RunInterrupted) as info:
        driver.run_training(cfg)
    assert info.value.resumable_run is None and list(tmp_path.iterdir()) == []  # the empty run dir is removed
    clean_env.setattr(driver, "checkpoints_in", lambda run_dir: [(0, f"{run_dir}/checkpoint_000000")])
    with pytest.raises(driver.RunInterrupted) as info:
        driver.run_training(cfg)
    assert info.value.resumable_run.startswith("demo-")


def test_ray_data_console_keeps_warnings_and_drops_the_progress_notice(tmp_path):
    """The shipped Ray Data logging config, as Ray Data itself reads it (in a fresh interpreter)."""
    import os
    import subprocess
    import sys

    code = ("import logging, ray.data\n"
            "logging.getLogger('ray.data._internal.progress').warning('NOTICE-progress-bars-disabled')\n"
            "logging.getLogger('ray.data._internal.execution').info('INFO-execution-plan')\n"
            "logging.getLogger('ray.data._internal.execution').warning('WARNING-backpressure')\n")
    env = {**os.environ, "RAY_DATA_LOGGING_CONFIG": console.QUIET_ENV["RAY_DATA_LOGGING_CONFIG"]}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    text = out.stdout + out.stderr
    assert "WARNING-backpressure" in text
    assert "NOTICE-progress-bars-disabled" not in text and "INFO-execution-plan" not in text
