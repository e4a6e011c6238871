"""Trunk weights from an MLflow run of hierclr: the encoders ``Tracker.log_encoder`` logs (``pt2`` LoggedModels),
the fallback to the run's ``hierclr.run_dir`` checkpoints, and the errors for a wrong run or store."""
from __future__ import annotations

import json
import re

import pytest
import torch
from mlflow import MlflowClient

from hierclr.config.sections import TrackingSection
from hierclr.io.checkpoint import TrainingState, save_checkpoint
from hierclr.models import MoCo, build_backbone
from hierclr.models.export import export_backbone
from hierclr.models.loading import load_backbone, parse_mlflow_source, read_source
from hierclr.runtime.tracking import Tracker


def _trunk(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    trunk, _ = build_backbone("resnet10", cifar_stem=True)
    trunk.train()
    with torch.no_grad():
        trunk(torch.randn(4, 3, 16, 16))  # non-trivial BN running statistics
    return trunk.eval()


def _same(module: torch.nn.Module, want: torch.nn.Module) -> None:
    got, ref = module.state_dict(), want.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def logged(store):
    """One run with encoder_best and encoder_last (different weights), as hierclr pretraining logs them."""
    tracker = Tracker.start(TrackingSection(uri=store, experiment="export-encoders"), run_name="r", params={})
    best, last = _trunk(1), _trunk(2)
    example = torch.zeros(2, 3, 16, 16)
    uris = {"encoder_last": tracker.log_encoder("encoder_last", last, example, step=3),
            "encoder_best": tracker.log_encoder("encoder_best", best, example, step=1)}
    assert all(u and u.startswith("models:/") for u in uris.values())
    run_id = tracker.run_id
    tracker.finish()
    return {"run_id": run_id, "best": best, "last": last, "uris": uris}


def test_parse_sources():
    assert parse_mlflow_source("mlflow:abc123") == ("abc123", None)
    assert parse_mlflow_source("mlflow:abc123/encoder_last") == ("abc123", "encoder_last")
    assert parse_mlflow_source("runs:/abc123/encoder_best") == ("abc123", "encoder_best")
    with pytest.raises(ValueError, match="expected mlflow:<run_id>"):
        parse_mlflow_source("mlflow:")
    with pytest.raises(ValueError, match="expected mlflow:<run_id>"):
        parse_mlflow_source("runs:/abc/a b")


def test_logged_encoders_load_with_identical_weights(store, logged):
    run_id = logged["run_id"]
    for source, want in ((f"mlflow:{run_id}", "last"),  # default: encoder_last, as the papers report
                         (f"runs:/{run_id}/encoder_best", "best"),
                         (f"mlflow:{run_id}/encoder_last", "last"),
                         (f"runs:/{run_id}/encoder_last", "last"),
                         (logged["uris"]["encoder_last"], "last")):
        trunk, _ = build_backbone("resnet10", cifar_stem=True)
        assert load_backbone(trunk, source, tracking_uri=store) == "mlflow-model", source
        _same(trunk, logged[want])
    found = read_source(f"mlflow:{run_id}", tracking_uri=store)
    assert found.origin == logged["uris"]["encoder_last"] and found.head == {}
    # which encoder and epoch (the hierclr.epoch tag log_encoder sets), whatever form the source takes
    assert (found.which, found.epoch) == ("last", 3)
    for source in (f"runs:/{run_id}/encoder_best", logged["uris"]["encoder_best"]):
        assert read_source(source, tracking_uri=store)[-2:] == (1, "best")


def test_tracking_uri_from_the_environment(store, logged, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    trunk, _ = build_backbone("resnet10", cifar_stem=True)
    assert load_backbone(trunk, f"mlflow:{logged['run_id']}") == "mlflow-model"
    _same(trunk, logged["last"])


def test_falls_back_to_encoder_best_then_to_the_run_dir(store, tmp_path, monkeypatch):
    tracking = TrackingSection(uri=store, experiment="export-fallback")
    example = torch.zeros(2, 3, 16, 16)
    # a run with only encoder_best (pickle format: quick to log, loads the module object): mlflow:<run_id> takes it
    tracker = Tracker.start(tracking, run_name="best-only", params={})
    best = _trunk(3)
    assert tracker.log_encoder("encoder_best", best, example, serialization_format="pickle")
    trunk, _ = build_backbone("resnet10", cifar_stem=True)
    assert load_backbone(trunk, f"mlflow:{tracker.run_id}", tracking_uri=store) == "mlflow-model"
    _same(trunk, best)

    # no model at all (log_models off): the newest checkpoint of its hierclr.run_dir tag
    torch.manual_seed(5)
    moco = MoCo("resnet10", dim=16, hidden_dim=32, queue_size=8, cifar_stem=True)
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir / "checkpoint_000002", TrainingState(epoch=2, model=moco.state_dict(), optimizer={}))
    bare = Tracker.start(tracking, run_name="no-model", params={}, tags={"hierclr.run_dir": str(run_dir)})
    trunk, _ = build_backbone("resnet10", cifar_stem=True)
    assert load_backbone(trunk, f"mlflow:{bare.run_id}", tracking_uri=store) == "hierclr-pretrain"
    _same(trunk, moco.encoder_q.backbone)
    # ... and its best_encoder.pt when the best encoder is asked for; the default stays the last encoder
    torch.manual_seed(6)
    other = MoCo("resnet10", dim=16, hidden_dim=32, queue_size=8, cifar_stem=True)
    torch.save({"epoch": 1, "knn_top1": 0.4, "encoder_q": other.encoder_q.state_dict()}, run_dir / "best_encoder.pt")
    found = read_source(f"mlflow:{bare.run_id}/encoder_best", tracking_uri=store)
    assert found.origin.endswith("best_encoder.pt") and found.kind == "hierclr-pretrain"
    trunk.load_state_dict(found.trunk)
    _same(trunk, other.encoder_q.backbone)
    assert (found.epoch, found.which) == (1, "best")
    for source in (f"mlflow:{bare.run_id}", f"mlflow:{bare.run_id}/encoder_last"):  # last: the newest checkpoint
        found = read_source(source, tracking_uri=store)
        assert (found.origin, found.epoch, found.which) == (str(run_dir / "checkpoint_000002"), 2, "last")

    # a logged model that does not load (pickle refused here) also falls back to the run's checkpoints
    assert Tracker.attach(tracking, bare.run_id).log_encoder("encoder_best", _trunk(7), example,
                                                            serialization_format="pickle")
    assert read_source(f"mlflow:{bare.run_id}/encoder_best", tracking_uri=store).kind == "mlflow-model"
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    found = read_source(f"mlflow:{bare.run_id}/encoder_best", tracking_uri=store)
    assert found.kind == "hierclr-pretrain" and found.origin.endswith("best_encoder.pt")


def test_errors_name_the_run_and_the_store(store, tmp_path):
    trunk, _ = build_backbone("resnet10", cifar_stem=True)
    with pytest.raises(ValueError, match=f"MLflow run {'0' * 32} not found in the tracking store {re.escape(store)}"):
        load_backbone(trunk, f"mlflow:{'0' * 32}", tracking_uri=store)
    bare = Tracker.start(TrackingSection(uri=store, experiment="export-errors"), run_name="empty", params={})
    with pytest.raises(ValueError, match=rf"run {bare.run_id} in the tracking store .* has no encoder model "
                                         r"encoder_last / encoder_best \(logged models: none\).*hierclr.run_dir"):
        load_backbone(trunk, f"mlflow:{bare.run_id}", tracking_uri=store)
    with pytest.raises(ValueError, match="no encoder model classifier_best"):
        load_backbone(trunk, f"runs:/{bare.run_id}/classifier_best", tracking_uri=store)
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(ValueError, match="no MLflow store at .*database file does not exist"):
        load_backbone(trunk, f"mlflow:{bare.run_id}", tracking_uri=f"sqlite:///{missing}")
    assert not missing.exists() and not missing.parent.exists()  # no empty store created by the lookup
    assert MlflowClient(store).get_run(bare.run_id)  # the store itself is untouched


def test_export_from_an_mlflow_run(store, logged, tmp_path):
    out = tmp_path / "r10.pth"
    r = export_backbone(f"mlflow:{logged['run_id']}", out, tracking_uri=store)
    assert (r.arch, r.cifar_stem, r.kind, r.fc) == ("resnet10", True, "mlflow-model", "zeros")
    assert r.origin == logged["uris"]["encoder_last"]
    meta = json.loads((tmp_path / "r10.pth.json").read_text())
    assert meta["source"] == f"mlflow:{logged['run_id']}" and meta["origin"] == r.origin
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [1, 1, 1, 1])
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True))
    model.fc = torch.nn.Identity()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), logged["last"](x))
