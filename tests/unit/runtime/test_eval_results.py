"""``results.json`` of an evaluation grows protocol by protocol, atomically, with each protocol's numbers in the
MLflow run at once; a failure keeps what was done and names the cause (issue 19 item 1). Real sqlite MLflow store."""
from __future__ import annotations

import json
import math

from mlflow import MlflowClient

from hierclr.config.sections import TrackingSection
from hierclr.runtime.eval_results import EvaluationRecord
from hierclr.runtime.tracking import Tracker


def _read(path):
    return json.loads(path.read_text())


def test_each_protocol_is_kept_as_it_finishes_and_a_failure_keeps_them(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker.start(TrackingSection(uri=uri, experiment="ev"), run_name="evaluate t", params={})
    path = tmp_path / "out" / "results.json"
    rec = EvaluationRecord(path, {"source": "/abs/ckpt", "protocols": ["knn", "linear", "semi"],
                                  "mlflow_run_id": tracker.run_id}, tracker)
    assert _read(path) == {"source": "/abs/ckpt", "protocols": ["knn", "linear", "semi"],
                           "mlflow_run_id": tracker.run_id, "status": "running", "done": [], "results": {}}
    rec.add("knn", {"knn/top1_k10": 0.5, "knn/top5_k10": 0.75})
    on_disk = _read(path)
    assert on_disk["results"] == {"knn/top1_k10": 0.5, "knn/top5_k10": 0.75} and on_disk["done"] == ["knn"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(tracker.run_id).data.metrics == {"knn/top1_k10": 0.5, "knn/top5_k10": 0.75}  # already
    rec.add("linear", {"linear/top1_best": 0.25, "linear/top5_best": math.nan, "linear/best_epoch": 1})

    rec.fail("semi0.1", "RunFailedError: run x failed: FileNotFoundError: r18.pth")
    run_id = tracker.run_id
    tracker.finish("FAILED")
    on_disk = _read(path)
    assert on_disk["status"] == "failed" and on_disk["done"] == ["knn", "linear"]
    assert on_disk["error"] == {"protocol": "semi0.1", "cause": "RunFailedError: run x failed: FileNotFoundError: r18.pth"}
    assert on_disk["results"]["knn/top1_k10"] == 0.5 and on_disk["results"]["linear/best_epoch"] == 1
    assert math.isnan(on_disk["results"]["linear/top5_best"])
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["hierclr.error"] == "semi0.1: RunFailedError: run x failed: FileNotFoundError: r18.pth"
    assert run.data.metrics["linear/top1_best"] == 0.25 and run.data.metrics["knn/top1_k10"] == 0.5
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # atomic writes leave no temp file


def test_a_finished_record_and_tracking_off(tmp_path):
    path = tmp_path / "results.json"
    rec = EvaluationRecord(path, {"source": "s"}, Tracker.disabled())
    rec.add("hierarchy", {"hierarchy/kmeans_label0": 0.125})
    payload = rec.finish()
    assert payload == _read(path) == {"source": "s", "status": "finished", "done": ["hierarchy"],
                                      "results": {"hierarchy/kmeans_label0": 0.125}}
