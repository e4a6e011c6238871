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


def test_hcal_sweep_trial_from_a_pretraining_checkpoint_with_class_mean_prototypes(ray_session, tmp_path,
                                                                                    digits_cache):
    """``hierclr sweep`` with ``command: hcal`` (the supervised driver inside a Tune trial, nested MLflow run, best
    config loadable as an hcal config), the trial being HCAL initialised from a hierclr pretraining checkpoint
    (trunk + MoCo head, prototypes from class means): per-level accuracy above chance, HVR per epoch in MLflow,
    encoders logged as MLflow models. (Scheduling and several trials: tests/ray/runtime/test_sweep.py.)"""
    import yaml

    from hierclr.config.sweep import load_sweep
    from hierclr.runtime.sweep import run_sweep

    torch.manual_seed(0)
    moco = MoCo("resnet10", dim=32, hidden_dim=64, queue_size=64)
    ckpt = tmp_path / "pretrain" / "checkpoint_000000"
    save_checkpoint(ckpt, TrainingState(epoch=0, model=moco.state_dict(), optimizer={}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tree = {"name": "hcal-init", "command": "hcal", "base": "digits-hcal", "metric": "acc/level0", "mode": "max",
            "max_concurrent_trials": 1, "scheduler": {"type": "fifo"}, "storage_path": str(tmp_path / "sweeps"),
            "set": {"tracking.uri": uri, "data.builtin_cache": str(digits_cache), "data.decode_batch_size": 64,
                    "model.backbone": "resnet10", "optim.batch_size": 32, "optim.epochs": 3,
                    "data.train": "builtin://digits/val",  # 359 images (the preset's 1438 cost ~4x the time)
                    "resources.num_workers": 2, "model.init": str(ckpt.parent), "model.init_head": True,
                    "hcal.feat_dim": 32, "hcal.hidden_dim": 64, "tracking.log_models": True},
            "space": {"hcal.init_prototypes": {"grid": ["class_means"]}}}
    path = tmp_path / "hcal.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = run_sweep(load_sweep(path), echo=lambda *a: None)
    [row] = result.rows
    assert row.status == "FINISHED" and row.epochs == 3, row
    cfg = load_supervised_config(result.best_config, task="hcal")
    assert cfg.hcal.init_prototypes == "class_means" and cfg.model.init == str(ckpt.parent)
    client = _client(cfg)
    run = client.get_run(row.mlflow_run_id)
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" in run.data.tags
    assert run.data.tags["hierclr.task"] == "hcal" and run.data.tags["hierclr.init"] == str(ckpt.parent)
    for key in ("loss/total", "loss/level0", "loss/level1", "weight/level0", "acc/level0", "acc/level1", "val/hvr"):
        assert _steps(client, run.info.run_id, key) == [0, 1, 2], key
    last = {k: max(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step).value for k in ("acc/level0", "acc/level1", "val/hvr", "weight/level0", "weight/level1")}
    # chance: 0.1 for 10 digits; 0.4 for the 3 shape groups (the largest group's share)
    assert last["acc/level0"] > 0.2 and last["acc/level1"] > 0.4, last
    assert 0 <= last["val/hvr"] <= 1 and abs(last["weight/level0"] + last["weight/level1"] - 1) < 1e-5
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert {m.name for m in models if m.source_run_id == run.info.run_id} == {"encoder_last", "encoder_best"}
    from hierclr.io.checkpoint import latest_checkpoint

    [train_run] = list(Path(result.sweep_dir, "runs").glob(f"hcal-init-{row.trial_id}-*"))
    state = load_checkpoint(latest_checkpoint(train_run))
    assert state.model["head.prototypes.0"].shape == (10, 32) and state.model["head.prototypes.1"].shape == (3, 32)


def test_wrong_init_checkpoint_fails_before_training(ray_session, tmp_path, digits_cache):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    cfg = tiny("digits-finetune", tmp_path, digits_cache, f"model.init={path}")  # resnet10 trunk
    with pytest.raises(ValueError, match="missing keys|unexpected keys"):
        run_training(cfg, echo=lambda *a: None)
