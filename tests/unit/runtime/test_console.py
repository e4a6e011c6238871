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


def test_the_epoch_line_has_the_chosen_numbers():
    from types import SimpleNamespace

    from hierclr.config.pretrain import load_config
    from hierclr.methods.contrastive import Contrastive

    method = SimpleNamespace(cfg=load_config("demo"))  # epoch_line reads the config only
    row = {"epoch": 3.0, "lr": 0.004393, "loss/total": 20.23741, "train/images_per_s": 70.2, "knn/top1_best": 0.9443,
           "knn/best_k": 20.0, "time/embed": 1.5, "time/cluster": 0.04, "time/broadcast": 0.1, "time/train": 20.1,
           "time/epoch": 23.46, "prototypes/level0/size_max": 99.0}
    assert Contrastive.epoch_line(method, row) == ("hierclr | epoch 3/3 | loss 20.2374 | lr 0.004393 | 70 img/s | "
                                                   "kNN top-1 0.9443 (k=20) | 23.5s (E-step 1.6s)")
    warmup = {k: v for k, v in row.items() if not k.startswith("knn/")}
    assert Contrastive.epoch_line(method, {**warmup, "epoch": 0.0, "time/embed": 2.6e-07}) == (
        "hierclr | epoch 0/3 | loss 20.2374 | lr 0.004393 | 70 img/s | 23.5s")  # warm-up: no E-step


def test_the_summary_is_one_json_line_with_the_last_epochs_numbers(monkeypatch, capsys):
    import argparse
    import json

    from hierclr.commands.common import train_and_report
    from hierclr.runtime import driver

    history = [{"epoch": e, "lr": 0.1, "loss/total": 1.0 / (e + 1), "time/train": 9.0} for e in range(3)]
    result = driver.RunResult(run_dir="/r/demo-1", checkpoint="/r/demo-1/checkpoint_2", history=history,
                              best={"epoch": 1, "knn_top1": 0.5}, mlflow_run_id="abc")
    monkeypatch.setattr(driver, "run_training", lambda cfg, **kw: result)
    args = argparse.Namespace(command="pretrain", resume=None, stop_after_epoch=None)
    assert train_and_report(object(), args, lambda k: k in ("epoch", "loss/total")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["last_epoch"] == {"epoch": 2, "loss/total": 0.3333} and summary["best"]["epoch"] == 1


def test_rays_setup_hook_silences_faiss_import_lines_in_a_fresh_worker_process(clean_env, tmp_path):
    """As in a Ray Train worker: root logger at INFO with a console handler, then hierclr's modules import faiss."""
    import os
    import subprocess
    import sys

    console.setup(False)
    hook = console.ray_runtime_env()["worker_process_setup_hook"]
    module, func = hook.rsplit(".", 1)
    code = ("import logging, sys, importlib\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            f"if sys.argv[1] == 'hook': getattr(importlib.import_module({module!r}), {func!r})()\n"
            "import faiss\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = {arg: subprocess.run([sys.executable, "-c", code, arg], env=env, capture_output=True, text=True,
                                check=True, cwd=tmp_path).stderr for arg in ("plain", "hook")}
    assert "Loading faiss" in runs["plain"]  # what Train's INFO root logger shows without the hook
    assert "faiss" not in runs["hook"], runs["hook"]
    console.setup(True)
    assert console.ray_runtime_env() == {}
