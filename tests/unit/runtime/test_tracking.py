"""MLflow tracking against a real local sqlite store: params, per-epoch metrics, resume idempotency, encoder
models, artifacts, and an unreachable server that must not stop training."""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from hierclr.config.loader import flatten
from hierclr.config.pretrain import load_config
from hierclr.config.sections import TrackingSection
from hierclr.runtime.tracking import RUN_KEY_TAG, Tracker, find_run, resolved_uri, sanitize_key


class _Records(logging.Handler):
    """Collects the tracking module's records; works with or without pytest's logging plugin."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def records():
    logger = logging.getLogger("hierclr.runtime.tracking")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating its tables takes a second); tests use their own runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking(store, request) -> TrackingSection:
    return TrackingSection(uri=store, experiment=f"test-{request.node.name}"[:200])


@pytest.fixture(scope="module")
def demo():
    return load_config("demo")


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5))


# ----------------------------------------------------------------------------------------------- URIs and keys
def test_resolved_uri_makes_local_stores_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    assert resolved_uri(TrackingSection()) == f"sqlite:///{here}/mlflow.db"
    assert resolved_uri("sqlite:///sub/x.db?timeout=30") == f"sqlite:///{here}/sub/x.db?timeout=30"
    assert resolved_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolved_uri("file:mlruns") == (here / "mlruns").as_uri()
    assert resolved_uri("file:///abs/mlruns") == "file:///abs/mlruns"
    assert resolved_uri("runs_here") == (here / "runs_here").as_uri()
    for remote in ("http://tracking:5000", "https://x.example.com", "databricks", "postgresql://u@h/db"):
        assert resolved_uri(remote) == remote


def test_sanitize_key():
    assert sanitize_key("knn/top1@20") == "knn/top1_20"
    assert sanitize_key("loss/instance:mean 1.0-x") == "loss/instance:mean 1.0-x"
    assert sanitize_key("/a//b/./c/") == "a/b/c"
    assert len(sanitize_key("k" * 400)) == 250


# ----------------------------------------------------------------------------------------------- params and metrics
def test_start_logs_the_flattened_config(tracking, demo, records, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts must go next to the database, not into the working directory
    tracker = Tracker.start(tracking, run_name=demo.name, params=demo, tags={"hierclr.method": demo.method},
                            run_key="/runs/demo-a")
    assert tracker.enabled and tracker.uri == tracking.uri
    run = MlflowClient(tracking.uri).get_run(tracker.run_id)
    expected = {k: str(v) for k, v in flatten(demo).items()}
    assert len(expected) > 50 and run.data.params == expected
    assert run.info.run_name == demo.name and run.info.status == "RUNNING"
    assert run.data.tags[RUN_KEY_TAG] == "/runs/demo-a" and run.data.tags["hierclr.method"] == demo.method
    db_dir = Path(tracking.uri.removeprefix("sqlite:///")).parent
    assert run.info.artifact_uri.startswith((db_dir / "mlruns").as_uri())
    assert not (tmp_path / "mlruns").exists()
    assert find_run(tracking, "/runs/demo-a") == tracker.run_id and find_run(tracking, "/runs/other") is None
    tracker.finish()
    assert MlflowClient(tracking.uri).get_run(run.info.run_id).info.status == "FINISHED" and not tracker.enabled
    assert records.warnings() == []


def test_params_over_a_batch_and_too_long_values(tracking, records):
    params = {"group": {f"p{i:03d}": i for i in range(250)}, "long": "x" * 7000}
    tracker = Tracker.start(tracking, run_name="params", params=params)
    stored = MlflowClient(tracking.uri).get_run(tracker.run_id).data.params
    assert len(stored) == 251 and stored["group.p249"] == "249" and stored["long"] == "x" * 6000
    assert any("long" in w and "truncated" in w for w in records.warnings())

    tracker.log_params({"data": {"num_classes": 10}, "group.p000": 0})  # later params; an unchanged one
    assert MlflowClient(tracking.uri).get_run(tracker.run_id).data.params["data.num_classes"] == "10"
    assert len(records.warnings()) == 1
    tracker.log_params({"data.num_classes": 11})
    assert "data.num_classes='10' (now '11')" in records.warnings()[-1] and tracker.enabled


def test_metrics_per_step(tracking):
    tracker = Tracker.start(tracking, run_name="metrics", params={})
    for epoch in range(3):
        tracker.log_metrics(epoch, {"loss": 1.0 / (epoch + 1), "knn/top1@20": 10.0 * epoch, "lr": torch.tensor(0.1)})
    tracker.log_metrics(3, {"loss": float("nan")})
    client = MlflowClient(tracking.uri)
    loss = client.get_metric_history(tracker.run_id, "loss")
    assert [m.step for m in loss] == [0, 1, 2, 3]
    assert [m.value for m in loss[:3]] == pytest.approx([1.0, 0.5, 1 / 3]) and math.isnan(loss[3].value)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "knn/top1_20")] == [
        (0, 0.0), (1, 10.0), (2, 20.0)]
    with pytest.raises((TypeError, ValueError)):
        tracker.log_metrics(4, {"loss": "not a number"})  # a caller bug, not a tracking failure
    assert tracker.enabled


def test_resume_records_every_epoch_once(tracking, demo, records):
    """Driver starts, rank 0 logs epochs 0-1 and dies after epoch 1; the restarted run re-trains epoch 1
    from the epoch-0 checkpoint and goes on: MLflow has one value per epoch, the first one."""
    driver = Tracker.start(tracking, run_name="resume", params=demo, run_key="/runs/resume")
    worker = Tracker.attach(tracking, driver.run_id)
    worker.log_metrics(0, {"loss": 3.0})
    worker.log_metrics(1, {"loss": 2.0})
    worker.log_metrics(1, {"knn/top1": 40.0})  # a second call for the same epoch adds new metrics
    run_id = driver.run_id
    driver.finish("FAILED")

    resumed = Tracker.start(tracking, run_name="resume", params=demo.model_dump(mode="json"), run_key="/runs/resume")
    assert resumed.run_id == run_id
    client = MlflowClient(tracking.uri)
    assert client.get_run(resumed.run_id).info.status == "RUNNING"
    worker = Tracker.attach(tracking, resumed.run_id)
    worker.log_metrics(1, {"loss": 2.5, "knn/top1": 41.0})
    worker.log_metrics(2, {"loss": 1.0, "knn/top1": 50.0})
    assert [(m.step, m.value) for m in client.get_metric_history(resumed.run_id, "loss")] == [
        (0, 3.0), (1, 2.0), (2, 1.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(resumed.run_id, "knn/top1")] == [
        (1, 40.0), (2, 50.0)]
    assert records.warnings() == []

    changed = demo.model_copy(update={"seed": demo.seed + 1})
    again = Tracker.start(tracking, run_name="resume", params=changed, run_key="/runs/resume")
    assert again.run_id == run_id
    assert client.get_run(again.run_id).data.params["seed"] == str(demo.seed)
    assert any("seed" in w and "keeps the first" in w for w in records.warnings())


def test_resuming_a_missing_run_starts_a_new_one(tracking, records):
    tracker = Tracker.start(tracking, run_name="fresh", params={}, run_id="0" * 32)
    assert tracker.enabled and tracker.run_id != "0" * 32
    assert any("does not exist" in w for w in records.warnings())


# ----------------------------------------------------------------------------------------------- artifacts
def test_artifacts(tracking, demo, tmp_path):
    tracker = Tracker.start(tracking, run_name="artifacts", params={})
    tracker.log_text(demo.to_yaml(), "config.yaml")
    tracker.log_dict({"levels": [10, 5]}, "prototypes/summary.json")
    (tmp_path / "protos").mkdir()
    torch.save(torch.ones(3, 4), tmp_path / "protos" / "level0.pt")
    tracker.log_artifact(tmp_path / "protos", "prototypes")
    client = MlflowClient(tracking.uri)
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"config.yaml", "prototypes"}
    assert {a.path for a in client.list_artifacts(tracker.run_id, "prototypes")} == {
        "prototypes/level0.pt", "prototypes/summary.json"}
    local = client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text()) == demo.model_dump(mode="json")
    with pytest.raises(FileNotFoundError):
        tracker.log_artifact(tmp_path / "missing.pt")


@pytest.mark.parametrize("serialization_format", ["pt2", "pickle"])
def test_encoder_is_a_loadable_model_with_signature(tracking, serialization_format, monkeypatch):
    tracker = Tracker.start(tracking, run_name="encoder", params={})
    tracker.log_metrics(4, {"knn/top1": 55.0})
    encoder = _encoder().train()
    example = torch.randn(8, 3, 10, 10)
    uri = tracker.log_encoder("encoder_best", encoder, example, step=4, serialization_format=serialization_format)
    assert uri is not None and uri.startswith("models:/") and tracker.enabled
    assert encoder.training  # the caller's module is untouched

    client = MlflowClient(tracking.uri)
    model = client.get_logged_model(uri.removeprefix("models:/"))
    assert model.name == "encoder_best" and model.source_run_id == tracker.run_id
    assert model.experiment_id == client.get_run(tracker.run_id).info.experiment_id
    assert model.metrics and {(m.key, m.step) for m in model.metrics} == {("knn/top1", 4)}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.uri)  # how a user reads the store: models:/ URIs
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.inputs[0].shape == (-1, 3, 10, 10)
    assert info.signature.outputs.inputs[0].shape == (-1, 5)
    loaded = mlflow.pytorch.load_model(uri)
    batch = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), encoder.eval()(batch))


def test_encoder_must_return_a_tensor(tracking):
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x, x

    tracker = Tracker.start(tracking, run_name="bad-encoder", params={})
    with pytest.raises(TypeError, match="expected one tensor"):
        tracker.log_encoder("encoder", Pair(), torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------- failures
def test_unreachable_server_disables_tracking_quickly(records):
    cfg = TrackingSection(uri="http://127.0.0.1:9")  # discard port: nothing listens
    before = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    t0 = time.monotonic()
    tracker = Tracker.start(cfg, run_name="x", params={"a": 1})
    worker = Tracker.attach(cfg, "f" * 32)
    elapsed = time.monotonic() - t0
    assert elapsed < 20
    assert not tracker.enabled and tracker.run_id is None and tracker.uri is None and not worker.enabled
    tracker.log_metrics(0, {"loss": 1.0})
    tracker.log_text("a: 1", "config.yaml")
    assert tracker.log_encoder("encoder", _encoder(), torch.zeros(2, 3, 8, 8)) is None
    tracker.finish("FAILED")
    warned = records.warnings()
    assert len(warned) == 2 and all("http://127.0.0.1:9" in w and "training continues" in w for w in warned)
    assert find_run(cfg, "/runs/x") is None
    assert {k: os.environ.get(k) for k in before} == before  # the probe's settings do not leak


def test_disabled_config_creates_no_run(store, records):
    cfg = TrackingSection(uri=store, experiment="never-created", enabled=False)
    tracker = Tracker.start(cfg, run_name="x", params={"a": 1})
    tracker.log_metrics(0, {"loss": 1.0})
    assert not tracker.enabled and tracker.run_id is None
    assert not Tracker.attach(cfg, "f" * 32).enabled
    assert MlflowClient(store).get_experiment_by_name("never-created") is None
    assert records.warnings() == []


def test_a_failing_store_mid_run_warns_once_and_disables(tracking, records, monkeypatch):
    tracker = Tracker.start(tracking, run_name="flaky", params={})
    tracker.log_metrics(0, {"loss": 1.0})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    seen = []

    def down(*args, **kwargs):
        seen.append((os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"), os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")))
        raise MlflowException("API request to http://tracking:5000 failed: connection refused")

    monkeypatch.setattr(MlflowClient, "log_batch", down)
    tracker.log_metrics(1, {"loss": 0.5})  # no exception
    tracker.log_metrics(2, {"loss": 0.25})
    tracker.log_text("x", "x.txt")
    assert not tracker.enabled and tracker.run_id is None
    assert len(records.warnings()) == 1 and "tracking is off" in records.warnings()[0]
    # a bounded retry budget during the run (MLflow's default stalls ~4 min), the user's own setting kept
    assert seen == [("5", "60")] and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_a_new_run_records_its_git_commit_command_and_datasets(tmp_path, monkeypatch):
    """What the run page's Source and Datasets show: the commit of the hierclr checkout that ran, the command line,
    and the splits as MLflow dataset inputs (context training / evaluation, manifest digest)."""
    from mlflow.utils.git_utils import get_git_commit

    import hierclr
    from hierclr.data.builtin import materialize_builtin
    from hierclr.data.source import open_source
    from hierclr.io.mlflow_store import COMMAND_ENV
    from hierclr.runtime.tracking import log_datasets

    monkeypatch.setenv(COMMAND_ENV, "hierclr pretrain --config demo --set data.fraction=0.5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.start(TrackingSection(uri=uri, experiment="tags"), run_name="r", params={})
    cfg = load_config("demo", ["data.fraction=0.5"])

    class Stream:  # what log_datasets reads of hierclr.data.streams.ImageStream
        def __init__(self, split):
            self.source = open_source(materialize_builtin(f"builtin://digits/{split}", tmp_path / "b"))

    log_datasets(tracker, cfg, {"train": Stream("train"), "embed": Stream("train"), "val": Stream("val")})
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    tags = run.data.tags
    commit = get_git_commit(os.path.dirname(hierclr.__file__))
    assert commit and tags["mlflow.source.git.commit"] == commit
    assert tags["hierclr.command"] == os.environ[COMMAND_ENV] and tags["mlflow.source.name"] == "hierclr pretrain"
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"digits/train", "digits/val"}  # the embed stream is the train split: logged once
    train = {t.key: t.value for t in inputs["digits/train"].tags}
    assert train["mlflow.data.context"] == "training" and train["data.fraction"] == "0.5" and train["rows"] == "1438"
    assert {t.key: t.value for t in inputs["digits/val"].tags}["mlflow.data.context"] == "evaluation"
    assert len(inputs["digits/train"].dataset.digest) == 12 and inputs["digits/train"].dataset.source_type == "local"
    tracker.finish()
