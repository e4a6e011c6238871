"""``hierclr evaluate`` resolves and checks everything before Ray (issue 19 item 1: a relative ``--source`` was
found by the driver, then not by the linear probe's Ray workers, after minutes of features): every local path
absolute, every trained protocol's config validated and its data checked, before Ray or an MLflow run. No Ray
here: starting it fails the test."""
from __future__ import annotations

import os

import pytest
import torch

from hierclr.config.evaluate import load_evaluate_config
from hierclr.io.fs import absolute
from hierclr.runtime.evaluate import run_evaluate, trained_runs


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(cfg):
        raise AssertionError("evaluate started Ray before its checks failed")

    monkeypatch.setattr("hierclr.runtime.evaluate.start_ray", refuse)
    monkeypatch.setattr("hierclr.runtime.driver.start_ray", refuse)


def test_absolute_leaves_uris_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("runs/demo") == str(tmp_path / "runs" / "demo")
    assert absolute("./a/../b.pt") == str(tmp_path / "b.pt")
    assert absolute("~/x") == os.path.expanduser("~/x")
    for uri in ("mlflow:0a1b", "mlflow:0a1b/encoder_best", "runs:/0a1b/encoder_last", "models:/m/1",
                "s3://bucket/x", "gs://b/x?x=1", "builtin://digits/val", "file:///data/x", "/abs/path"):
        assert absolute(uri) == uri


def test_every_path_of_an_evaluation_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_evaluate_config("digits", [
        "source=hierclr_runs/demo-1", "output_dir=eval", "data.train=data/train", "data.val=./data/val",
        "data.hierarchy=h.tsv", "data.builtin_cache=cache", "linear.config=configs/lin.yaml",
        "semi.fractions=[0.01,0.1]", "semi.subset_files=[lists/1percent.txt,lists/10percent.txt]"])
    a = cfg.with_absolute_paths()
    t = str(tmp_path)
    assert a.source == f"{t}/hierclr_runs/demo-1" and a.output_dir == f"{t}/eval"
    assert (a.data.train, a.data.val, a.data.hierarchy, a.data.builtin_cache) == (
        f"{t}/data/train", f"{t}/data/val", f"{t}/h.tsv", f"{t}/cache")
    assert a.linear.config == f"{t}/configs/lin.yaml" and a.semi.config == "digits-semi"  # a preset name stays
    assert a.semi.subset_files == (f"{t}/lists/1percent.txt", f"{t}/lists/10percent.txt")
    assert a.model_dump(exclude={"source", "output_dir", "data", "linear", "semi"}) == \
        cfg.model_dump(exclude={"source", "output_dir", "data", "linear", "semi"})
    m = load_evaluate_config("digits", ["source=mlflow:abc123/encoder_best"]).with_absolute_paths()
    assert m.source == "mlflow:abc123/encoder_best" and m.data.train == "builtin://digits/train"


def _trunk_file(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    return "r18.pth"  # relative, as the README writes sources


def test_trained_protocols_get_absolute_paths_and_are_validated_up_front(tmp_path, monkeypatch, digits_cache):
    monkeypatch.chdir(tmp_path)
    source = _trunk_file(tmp_path)
    cfg = load_evaluate_config("digits", [f"source={source}", f"data.builtin_cache={digits_cache}",
                                          "semi.fractions=[0.5]", "output_dir=out"]).with_absolute_paths()
    runs = trained_runs(cfg, tmp_path / "out" / "e", cfg.tracking)
    assert [r.label for r in runs] == ["linear", "semi0.5"]
    for r in runs:
        assert r.config.model.init == str(tmp_path / "r18.pth")
        assert r.config.checkpoint.storage_path == str(tmp_path / "out" / "e" / "runs")
    assert runs[1].config.subset.ids_file == str(tmp_path / "out" / "e" / "subset_0.5.npy") and runs[1].fraction == 0.5

    # a bad nested override fails before Ray, before an output folder or an MLflow run exists
    bad = load_evaluate_config("digits", [f"source={source}", f"data.builtin_cache={digits_cache}",
                                          "output_dir=out", "tracking.uri=sqlite:///m.db", "linear.set=[optim.epoch=3]"])
    with pytest.raises(ValueError, match=r"(?s)linear.config digits-linear \(protocol linear\).*optim.epoch: Extra inputs"):
        run_evaluate(bad, echo=lambda *a: None)
    too_big = load_evaluate_config("digits", [f"source={source}", f"data.builtin_cache={digits_cache}",
                                              "output_dir=out", "tracking.uri=sqlite:///m.db",
                                              "semi.set=[optim.batch_size=5000]"])
    with pytest.raises(ValueError, match=r"has 1438 images, fewer than one global batch \(optim.batch_size=5000\)"):
        run_evaluate(too_big, echo=lambda *a: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()

    # an output_dir that cannot be created is named, before Ray
    (tmp_path / "file").write_text("x")
    unwritable = load_evaluate_config("digits", [f"source={source}", f"data.builtin_cache={digits_cache}",
                                                 "output_dir=file/eval", "protocols=[knn]"])
    with pytest.raises(ValueError, match=r"output_dir .*/file/eval is not writable"):
        run_evaluate(unwritable, echo=lambda *a: None)


def test_a_failed_protocol_is_recorded_with_its_cause(tmp_path, monkeypatch, digits_cache):
    """The linear probe's run fails (here: its Ray cannot start): results.json says which protocol failed and why,
    and the evaluation's MLflow run is FAILED with the cause in ``hierclr.error``. No feature pass (linear only)."""
    import json

    from mlflow import MlflowClient

    from hierclr.runtime.driver import RunFailedError

    def broken(cfg):
        raise RuntimeError("no Ray for the linear probe")

    monkeypatch.setattr("hierclr.runtime.evaluate.start_ray", lambda cfg: None)
    monkeypatch.setattr("hierclr.runtime.evaluate.quiet_ray_data", lambda: None)
    monkeypatch.setattr("hierclr.runtime.driver.start_ray", broken)
    monkeypatch.chdir(tmp_path)
    cfg = load_evaluate_config("digits", [f"source={_trunk_file(tmp_path)}", f"data.builtin_cache={digits_cache}",
                                          "output_dir=out", "tracking.uri=sqlite:///m.db", "protocols=[linear]",
                                          "plot=none"])
    with pytest.raises(RunFailedError, match="no Ray for the linear probe"):
        run_evaluate(cfg, echo=lambda *a: None)
    (results,) = (tmp_path / "out").glob("*/results.json")
    payload = json.loads(results.read_text())
    assert payload["status"] == "failed" and payload["done"] == [] and payload["error"]["protocol"] == "linear"
    assert "RuntimeError: no Ray for the linear probe" in payload["error"]["cause"]
    assert payload["source"] == str(tmp_path / "r18.pth")
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db").get_run(payload["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["hierclr.error"].startswith("linear: RunFailedError: ")
    assert "no Ray for the linear probe" in run.data.tags["hierclr.error"]
