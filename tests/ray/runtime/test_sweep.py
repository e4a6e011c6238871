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


def tiny_sweep(tmp: Path, cache: Path, name: str, space: dict, **options) -> Path:
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
                "service.cpus_per_actor": 1, "resources.num_workers": 2, "resources.cpus_per_worker": 0.5, "eval.ks": [5, 10], "tracking.log_models": False},
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


def test_sweep_nested_runs_failed_trial_summary_and_best_config(ray_session, tmp_path, digits_cache):
    space = {"clustering.sizes": {"grid": [[16, 8], [12], [5000]]},  # [5000]: more prototypes than images
             "loss.temperature": {"choice": [0.1, 0.2]}}
    sweep = load_sweep(tiny_sweep(tmp_path, digits_cache, "s1", space,
                                  scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2}))
    result = run_sweep(sweep, echo=lambda *a: None)
    assert not result.interrupted
    by_sizes = {tuple(r.params["clustering.sizes"]): r for r in result.rows}
    assert set(by_sizes) == {(16, 8), (12,), (5000,)}
    failed = by_sizes[(5000,)]
    assert failed.status == "FAILED" and "5000 prototypes" in failed.error, failed.error
    ok = [by_sizes[(16, 8)], by_sizes[(12,)]]
    assert all(r.status in ("FINISHED", "STOPPED") for r in ok)  # ASHA may stop the weaker one after epoch 0
    assert ok[0].status == "FINISHED" or ok[1].status == "FINISHED"
    for r in ok:
        assert r.params["loss.temperature"] in (0.1, 0.2)
        assert 0.1 < r.best <= 1.0 and r.epochs == (2 if r.status == "FINISHED" else 1)

    client = _client(tmp_path)
    parents, children = _runs(client, "s1")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == result.parent_run_id
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert parent.data.params["space.clustering.sizes"].startswith("grid")
    assert parent.data.params["metric"] == "knn/top1_best"
    child = {tuple(yaml.safe_load(c.data.params["clustering.sizes"])): c for c in children}
    assert child[(5000,)].info.status == "FAILED"
    assert "fewer than the 5000 prototypes" in child[(5000,)].data.tags["hierclr.error"]
    for r in ok:
        c = child[tuple(r.params["clustering.sizes"])]
        assert c.info.status == "FINISHED"
        assert c.data.tags["hierclr.sweep.status"] == {"FINISHED": "finished", "STOPPED": "stopped_early"}[r.status]
        assert float(c.data.params["loss.temperature"]) == r.params["loss.temperature"]
        steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, "knn/top1_best"))
        assert steps == list(range(r.epochs))
        assert c.data.tags["hierclr.trial_id"] == r.trial_id and c.info.run_id == r.mlflow_run_id
        arts = {a.path for d in ("plots", "hierarchy/final") for a in client.list_artifacts(c.info.run_id, d)}
        assert "plots/learning_curves.png" in arts, arts  # a trial is a full pretrain run, with its artifacts
        if r.status == "FINISHED":  # (a trial stopped after the warm-up epoch has no prototypes)
            assert "hierarchy/final/tree.json" in arts, arts
    # best: config file that `hierclr pretrain --config` accepts as is, metric and table in the parent run
    best = max((r for r in ok), key=lambda r: r.best)
    assert result.best.trial_id == best.trial_id
    cfg = load_config(result.best_config)
    assert cfg.clustering.sizes == tuple(best.params["clustering.sizes"])
    assert cfg.loss.temperature == best.params["loss.temperature"] and cfg.name == "s1-best"
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["best/knn/top1_best"] == pytest.approx(best.best)
    assert parent.data.tags["hierclr.best_trial"] == best.trial_id
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/trials.csv", "summary/trials.txt", "summary/best_config.yaml",
            "summary/metric_vs_params.png"} <= arts, arts
    local = Path(client.download_artifacts(parent.info.run_id, "summary/metric_vs_params.png", str(tmp_path)))
    assert _png(local)[0] > 100
    table = Path(result.sweep_dir, "summary", "trials.txt").read_text()
    assert "FAILED" in table and best.trial_id in table


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
    path = tiny_sweep(tmp_path, digits_cache, "s2", space, scheduler={"type": "fifo"})
    assert load_sweep(path).num_trials == 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "driver.log").open("w")
    pipeline = Path(__file__).resolve().parents[3] / "pipelines" / "sweep.py"  # the `ray job submit` entry point
    # the driver starts its own local Ray (4 logical CPUs, from the demo preset), as `hierclr sweep` on a laptop
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


def test_asha_stop_ends_the_trial_itself_and_the_next_trial_runs(ray_session, tmp_path, digits_cache):
    """ASHA on a metric that separates the trials for sure (the epoch's lr, mode max): the second trial falls
    below the first at the first rung and is stopped after epoch 0. The stop is cooperative: the trial ends at
    that epoch boundary with a checkpoint and its artifacts, its MLflow run is FINISHED and tagged, and the
    sweep goes on (no Train resources left behind)."""
    space = {"optim.base_lr": {"grid": [0.24, 0.024]}}
    sweep = load_sweep(tiny_sweep(tmp_path, digits_cache, "s3", space, metric="lr", mode="max",
                                  scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2}),
                       ["set.checkpoint.every=2",  # epoch 0 (of 2) is not checkpointed...
                        "set.data.val=null"])  # (ASHA reads the lr: no kNN needed)
    result = run_sweep(sweep, echo=lambda *a: None)
    by_lr = {r.params["optim.base_lr"]: r for r in result.rows}
    assert by_lr[0.24].status == "FINISHED" and by_lr[0.24].epochs == 2
    stopped = by_lr[0.024]
    assert stopped.status == "STOPPED" and stopped.epochs == 1, result.rows
    assert result.best.params == {"optim.base_lr": 0.24}
    client = _client(tmp_path)
    run = client.get_run(stopped.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["hierclr.sweep.status"] == "stopped_early"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/total")) == [0]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.json", "config", "plots"} <= arts, arts  # the final artifacts were written
    # ...but the stopped Train run ended with a checkpoint of its stopping epoch
    from hierclr.io.checkpoint import latest_checkpoint, load_checkpoint

    train_runs = list(Path(result.sweep_dir, "runs").glob(f"s3-{stopped.trial_id}-*"))
    assert len(train_runs) == 1
    assert load_checkpoint(latest_checkpoint(train_runs[0])).epoch == 0
