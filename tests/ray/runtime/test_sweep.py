"""End-to-end sweeps on a local Ray: real Tune, real Ray Train trials (2 gloo workers each) on the built-in
digits parquet shards, real sqlite MLflow. Nested child runs, a failing trial, ASHA, the summary artifacts,
the best config, and an interrupted-then-resumed sweep without duplicated runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hierclr.config.pretrain import load_config
from hierclr.config.sweep import load_sweep
from hierclr.runtime.sweep import run_sweep

pytestmark = pytest.mark.timeout(1200)


def tiny_sweep(tmp: Path, cache: Path, name: str, space: dict, extra_set: dict | None = None, **options) -> Path:
    """A sweep file whose trials are tiny 2-epoch HCSC runs (1 warm-up epoch) on 359 digits."""
    tree = {
        "name": name, "base": "demo", "metric": "knn/top1_best", "mode": "max", "max_concurrent_trials": 1,
        "storage_path": str(tmp / "sweeps"),
        "set": {"tracking.uri": f"sqlite:///{tmp}/mlflow.db", "data.builtin_cache": str(cache),
                "data.train": "builtin://digits/val", "data.val": "builtin://digits/val", "data.decode_batch_size": 64,
                "model.backbone": "resnet10", "model.hidden_dim": 128, "model.queue_size": 128,
                "model.momentum": 0.9, "optim.batch_size": 32, "optim.epochs": 2, "optim.base_lr": 0.24,
                "loss.warmup_epochs": 1, "clustering.nredo": 1,
                # the clustering actor takes a real CPU: it must be scheduled outside the trial's placement group
                "service.cpus_per_actor": 1, "resources.num_workers": 2, "resources.cpus_per_worker": 0.5, "eval.ks": [5, 10], "tracking.log_models": False,
                **(extra_set or {})},
        "space": space, **options,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")


def _runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("hierclr.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_sweep_nested_runs_failed_trial_asha_stop_summary_and_best_config(ray_session, tmp_path, digits_cache):
    """Three trials, one at a time, with outcomes fixed by construction (no warm-up, so every epoch clusters):
    [16, 8] trains both epochs; [5000] asks for more prototypes than there are images and fails before it
    trains (a FAILED child run all the same); [12] reports 12 level-0 prototypes at ASHA's first rung, below the [16, 8] trial's 16, and is stopped
    after epoch 0. The stop is cooperative: that trial ends at the epoch boundary with a checkpoint of its
    stopping epoch and its artifacts, its MLflow run is FINISHED and tagged, and the sweep goes on."""
    space = {"clustering.sizes": {"grid": [[16, 8], [5000], [12]]},  # [5000]: more prototypes than images
             "loss.temperature": {"choice": [0.1, 0.2]}}
    sweep = load_sweep(tiny_sweep(tmp_path, digits_cache, "s1", space, metric="prototypes/level0/num_prototypes",
                                  scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2}),
                       ["set.loss.warmup_epochs=0",
                        "set.checkpoint.every=2"])  # epoch 0 (of 2) is not checkpointed...
    console: list[str] = []
    result = run_sweep(sweep, echo=console.append)
    assert not result.interrupted
    by_sizes = {tuple(r.params["clustering.sizes"]): r for r in result.rows}
    assert set(by_sizes) == {(16, 8), (12,), (5000,)}
    failed, finished, stopped = by_sizes[(5000,)], by_sizes[(16, 8)], by_sizes[(12,)]
    assert failed.status == "FAILED" and "5000 prototypes" in failed.error, failed.error
    assert finished.status == "FINISHED" and finished.epochs == 2 and finished.score == 16
    assert stopped.status == "STOPPED" and stopped.epochs == 1 and stopped.score == 12, result.rows
    assert (finished.score_epoch, stopped.score_epoch) == (1, 0)  # scope last: each trial's last epoch
    for r in (finished, stopped):
        assert r.params["loss.temperature"] in (0.1, 0.2)

    client = _client(tmp_path)
    parents, children = _runs(client, "s1")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == result.parent_run_id
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert parent.data.params["space.clustering.sizes"].startswith("grid")
    assert parent.data.params["metric"] == "prototypes/level0/num_prototypes"
    child = {tuple(yaml.safe_load(c.data.params["clustering.sizes"])): c for c in children}
    assert child[(5000,)].info.status == "FAILED"
    assert "fewer than the 5000 prototypes" in child[(5000,)].data.tags["hierclr.error"]
    for r in (finished, stopped):
        c = child[tuple(r.params["clustering.sizes"])]
        assert c.info.status == "FINISHED"
        assert c.data.tags["hierclr.sweep.status"] == {"FINISHED": "finished", "STOPPED": "stopped_early"}[r.status]
        assert float(c.data.params["loss.temperature"]) == r.params["loss.temperature"]
        for key in ("knn/top1_best", "loss/total", "prototypes/level0/num_prototypes"):
            assert _steps(client, c.info.run_id, key) == list(range(r.epochs)), key  # every epoch once
        assert 0.1 < c.data.metrics["knn/top1_best"] <= 1.0
        assert c.data.tags["hierclr.trial_id"] == r.trial_id and c.info.run_id == r.mlflow_run_id
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"history.json", "config", "plots"} <= arts, arts  # a trial is a full pretrain run
        arts = {a.path for d in ("plots", "hierarchy/final") for a in client.list_artifacts(c.info.run_id, d)}
        assert {"plots/learning_curves.png", "hierarchy/final/tree.json"} <= arts, arts
    # ...but the stopped Train run ended with a checkpoint of its stopping epoch
    from hierclr.io.checkpoint import latest_checkpoint, load_checkpoint

    train_runs = list(Path(result.sweep_dir, "runs").glob(f"s1-{stopped.trial_id}-*"))
    assert len(train_runs) == 1
    assert load_checkpoint(latest_checkpoint(train_runs[0])).epoch == 0
    # best: config file that `hierclr pretrain --config` accepts as is, metric and table in the parent run
    assert result.best.trial_id == finished.trial_id
    cfg = load_config(result.best_config)
    assert cfg.clustering.sizes == (16, 8) and cfg.loss.warmup_epochs == 0
    assert cfg.loss.temperature == finished.params["loss.temperature"] and cfg.name == "s1-best"
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["best/prototypes/level0/num_prototypes"] == 16
    # the parent's best is the winning child's shown (latest) value and its score; logged once, at step = 2 trials
    won = client.get_run(finished.mlflow_run_id).data.metrics
    assert won["prototypes/level0/num_prototypes"] == won["score/prototypes/level0/num_prototypes"] == 16
    assert _steps(client, parent.info.run_id, "best/prototypes/level0/num_prototypes") == [2]
    assert "scheduler.grace_period" in parent.data.params and parent.data.params["scope"] == "last"
    assert any("prototypes/level0/num_prototypes (last)" in line for line in console), console
    assert not any("tie at" in line for line in console), console
    assert parent.data.tags["hierclr.best_trial"] == finished.trial_id
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/trials.csv", "summary/trials.txt", "summary/best_config.yaml",
            "summary/metric_vs_params.png"} <= arts, arts
    local = Path(client.download_artifacts(parent.info.run_id, "summary/metric_vs_params.png", str(tmp_path)))
    assert _png(local)[0] > 100
    table = Path(result.sweep_dir, "summary", "trials.txt").read_text()
    assert "FAILED" in table and finished.trial_id in table


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _wait_for(predicate, timeout: float, what: str, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep driver exited ({proc.returncode}) before {what}")
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def test_interrupted_sweep_resumes_without_duplicating_runs(ray_session, tmp_path, digits_cache):
    space = {"clustering.sizes": {"grid": [[16, 8], [12]]}, "loss.temperature": {"choice": [0.1, 0.2]}}
    # MoCo v2 trials on one Train worker: what is checked here is the sweep's bookkeeping, not DDP or the E-step
    # (both checked above); the swept clustering.sizes only name the trials
    path = tiny_sweep(tmp_path, digits_cache, "s2", space, {"resources.num_workers": 1, "method": "moco"},
                      scheduler={"type": "fifo"})
    assert load_sweep(path).num_trials == 2
    # the driver joins the session's Ray (RAY_ADDRESS), as the `ray job submit` entry point does on a cluster
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    log = (tmp_path / "driver.log").open("w")
    pipeline = Path(__file__).resolve().parents[3] / "pipelines" / "sweep.py"  # the `ray job submit` entry point
    proc = subprocess.Popen([sys.executable, str(pipeline), "--space", str(path)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    client = _client(tmp_path)

    def first_done_second_running():
        # the second trial's run exists only once Tune has recorded the first as complete (one trial at a time)
        exp = client.get_experiment_by_name("s2")
        if exp is None:
            return False
        runs = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        return ({r.info.status for r in runs} == {"FINISHED", "RUNNING"} and len(runs) == 2)

    def driver_log() -> str:
        return (tmp_path / "driver.log").read_text(errors="replace")[-4000:]

    try:
        _wait_for(first_done_second_running, 600, "the first trial finished and the second started", proc)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment state and the driver ends
        assert proc.wait(timeout=300) == 3, driver_log()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    parents, children = _runs(client, "s2")
    assert len(parents) == 1 and parents[0].info.status == "KILLED", driver_log()
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED"], driver_log()  # KILLED: interrupted
    finished_before = {c.info.run_id: c for c in children if c.info.status == "FINISHED"}

    result = run_sweep(load_sweep(path), resume=True, echo=lambda *a: None)
    assert not result.interrupted and [r.status for r in result.rows] == ["FINISHED"] * 2
    parents, children = _runs(client, "s2")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not any(k.startswith("scheduler.") and k != "scheduler.type" for k in parents[0].data.params)  # FIFO
    best_child = next(c for c in children if c.info.run_id == result.best.mlflow_run_id)
    assert parents[0].data.metrics["best/knn/top1_best"] == best_child.data.metrics["knn/top1_best"] \
        == best_child.data.metrics["score/knn/top1_best"] == result.best.score  # scope last: the shown value
    assert len(children) == 2, [(c.info.run_name, c.info.status) for c in children]
    assert len({c.data.tags["hierclr.trial_id"] for c in children}) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert {tuple(yaml.safe_load(c.data.params["clustering.sizes"])) for c in children} == {(16, 8), (12,)}
    for c in children:
        for key in ("knn/top1_best", "loss/total", "epoch"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            assert sorted(steps) == [0, 1], (c.info.run_name, key, steps)  # every epoch once, none repeated
    for run_id, before in finished_before.items():  # a trial finished before the interruption was not re-run
        after = client.get_run(run_id)
        assert after.info.end_time == before.info.end_time
