"""``hierclr finetune`` / ``hierclr hcal`` end to end: real local Ray Train (2 gloo workers), real parquet shards
of the built-in digits (10 classes -> 3 shape groups), real sqlite MLflow, real checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hierclr.config.supervised import load_supervised_config
from hierclr.io.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from hierclr.models import MoCo
from hierclr.runtime.driver import run_training

pytestmark = pytest.mark.timeout(900)


def tiny(preset: str, tmp: Path, cache: Path, *extra: str):
    return load_supervised_config(preset, [
        f"checkpoint.storage_path={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"data.builtin_cache={cache}", "data.decode_batch_size=64", "model.backbone=resnet10",
        "optim.batch_size=32", "resources.num_workers=2", "tracking.log_models=false", *extra])


def _client(cfg):
    from mlflow.tracking import MlflowClient

    from hierclr.runtime.tracking import resolved_uri

    return MlflowClient(tracking_uri=resolved_uri(cfg.tracking))


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_finetune_varcon_two_workers_learns_logs_and_resumes(ray_session, tmp_path, digits_cache):
    cfg = tiny("digits-finetune", tmp_path, digits_cache, "loss.name=varcon", "optim.epochs=3", "optim.base_lr=0.8",
               "data.train=builtin://digits/val")
    first = run_training(cfg, stop_after_epoch=1, echo=lambda *a: None)
    assert [int(r["epoch"]) for r in first.history] == [0, 1]
    result = run_training(cfg, resume="latest", echo=lambda *a: None)
    assert result.run_dir == first.run_dir and result.mlflow_run_id == first.mlflow_run_id
    h = result.history
    assert [int(r["epoch"]) for r in h] == [0, 1, 2]
    # 10 classes: chance is 0.1 (+-0.016 on 359 images); 3 short epochs land between 0.29 and 0.5 from run to run
    assert h[-1]["acc/top1"] > 0.2, [r["acc/top1"] for r in h]
    assert h[-1]["acc/level1"] >= h[-1]["acc/top1"]  # a right digit is a right shape group
    assert 0 < h[-1]["train/tau2_mean"] < 0.2 and h[-1]["loss/kl"] >= 0
    assert h[-1]["val/samples"] == 359
    client = _client(cfg)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.name"] == "varcon" and run.data.tags["hierclr.task"] == "finetune"
    for key in ("loss/total", "loss/varcon", "loss/kl", "loss/nll", "loss/ce", "acc/top1", "acc/top5", "acc/level0",
                "acc/level1", "lr", "train/images_per_s"):
        assert _steps(client, run.info.run_id, key) == [0, 1, 2], key
    assert {"config", "history.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    state = load_checkpoint(result.checkpoint)
    assert state.epoch == 2 and "backbone.conv1.weight" in state.model and "head.0.weight" in state.model
    assert result.best["metric"] == "acc/top1" and Path(result.run_dir, "best_model.pt").is_file()


def test_hcal_from_a_pretraining_checkpoint_with_class_mean_prototypes(ray_session, tmp_path, digits_cache):
    """HCAL initialised from a hierclr pretraining checkpoint (trunk + MoCo head, prototypes from class means):
    per-level accuracy above chance, HVR per epoch in MLflow, encoders logged as MLflow models."""
    torch.manual_seed(0)
    moco = MoCo("resnet10", dim=32, hidden_dim=64, queue_size=64)
    ckpt = tmp_path / "pretrain" / "checkpoint_000000"
    save_checkpoint(ckpt, TrainingState(epoch=0, model=moco.state_dict(), optimizer={}))
    cfg = tiny("digits-hcal", tmp_path, digits_cache, "optim.epochs=2", f"model.init={ckpt.parent}", "model.init_head=true", "hcal.feat_dim=32", "hcal.hidden_dim=64",
               "hcal.init_prototypes=class_means", "tracking.log_models=true")
    result = run_training(cfg, echo=lambda *a: None)
    h = result.history
    # chance: 0.1 for 10 digits; 0.4 for the 3 shape groups (the largest group's share)
    assert h[-1]["acc/level0"] > 0.2 and h[-1]["acc/level1"] > 0.4, h[-1]
    assert 0 <= h[-1]["val/hvr"] <= 1 and "val/hvr/level0-1" in h[-1]
    assert all(abs(sum(r[f"weight/level{lv}"] for lv in range(2)) - 1) < 1e-5 for r in h)
    client = _client(cfg)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["hierclr.init"] == str(ckpt.parent)
    for key in ("loss/total", "loss/level0", "loss/level1", "weight/level0", "acc/level0", "acc/level1", "val/hvr"):
        assert _steps(client, run.info.run_id, key) == [0, 1], key
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert {m.name for m in models if m.source_run_id == run.info.run_id} == {"encoder_last", "encoder_best"}
    state = load_checkpoint(result.checkpoint)
    assert state.model["head.prototypes.0"].shape == (10, 32) and state.model["head.prototypes.1"].shape == (3, 32)


def test_sweep_over_finetune_losses(ray_session, tmp_path, digits_cache):
    """``hierclr sweep`` with ``command: finetune``: the trial runs the supervised driver, nested MLflow run, best
    config loadable as a finetune config. (Scheduling and several trials: tests/ray/runtime/test_sweep.py.)"""
    import yaml

    from hierclr.config.sweep import load_sweep
    from hierclr.runtime.sweep import run_sweep

    tree = {"name": "losses", "command": "finetune", "base": "digits-finetune", "metric": "acc/top1", "mode": "max",
            "max_concurrent_trials": 1, "scheduler": {"type": "fifo"}, "storage_path": str(tmp_path / "sweeps"),
            "set": {"tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", "data.builtin_cache": str(digits_cache),
                    "data.train": "builtin://digits/val", "model.backbone": "resnet10", "optim.batch_size": 32,
                    "optim.epochs": 1, "resources.num_workers": 1, "tracking.log_models": False},
            "space": {"loss.name": {"grid": ["supcon"]}}}
    path = tmp_path / "losses.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = run_sweep(load_sweep(path), echo=lambda *a: None)
    assert [r.params["loss.name"] for r in result.rows] == ["supcon"]
    assert all(r.status == "FINISHED" and 0 <= r.best <= 1 for r in result.rows), result.rows
    client = _client(load_supervised_config("digits-finetune", [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]))
    exp = client.get_experiment_by_name("losses")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert [c.data.params["loss.name"] for c in children] == ["supcon"]
    assert all(c.data.tags["hierclr.task"] == "finetune" and "acc/top1" in c.data.metrics for c in children)
    best = load_supervised_config(result.best_config, task="finetune")
    assert best.loss.name == "supcon" and best.optim.epochs == 1


def test_wrong_init_checkpoint_fails_before_training(ray_session, tmp_path, digits_cache):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    cfg = tiny("digits-finetune", tmp_path, digits_cache, f"model.init={path}")  # resnet10 trunk
    with pytest.raises(ValueError, match="missing keys|unexpected keys"):
        run_training(cfg, echo=lambda *a: None)
