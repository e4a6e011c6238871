"""What a sweep's child runs carry when the sweep ends: status, how the trial ended, and its score in the summary
as ``score/<metric>`` (tag ``hierclr.sweep.metric`` names it), so one runs-table column compares the trials."""
from __future__ import annotations

from mlflow import MlflowClient

from hierclr.config.sections import TrackingSection
from hierclr.runtime.sweep import _finalize_children
from hierclr.runtime.sweep_summary import TrialRow
from hierclr.runtime.tracking import Tracker


def test_children_get_their_score_under_one_name(tmp_path):
    tcfg = TrackingSection(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="sweep")
    ids = [Tracker.start(tcfg, run_name=f"t{i}", params={}).run_id for i in range(3)]
    rows = [TrialRow("t0", {}, "FINISHED", 4, 0.61, score_epoch=3, mlflow_run_id=ids[0]),
            TrialRow("t1", {}, "STOPPED", 2, 0.42, score_epoch=1, mlflow_run_id=ids[1]),
            TrialRow("t2", {}, "FAILED", 0, None, mlflow_run_id=ids[2])]
    _finalize_children(rows, tcfg, "knn/top1_best")
    _finalize_children(rows, tcfg, "knn/top1_best")  # a resumed sweep ends again: nothing logged twice
    client = MlflowClient(tracking_uri=tcfg.uri)
    for row, run_id in zip(rows, ids):
        run = client.get_run(run_id)
        assert run.data.tags["hierclr.sweep.metric"] == "knn/top1_best"
        history = [(m.step, m.value) for m in client.get_metric_history(run_id, "score/knn/top1_best")]
        assert history == ([] if row.score is None else [(row.score_epoch, row.score)])
    assert client.get_run(ids[1]).data.tags["hierclr.sweep.status"] == "stopped_early"
    assert client.get_run(ids[2]).info.status == "FAILED"
