"""Two (or more) runs that start at once on one fresh local MLflow store: both track, neither turns MLflow off.

Measured (issue 18): two fresh ``hierclr pretrain`` at once raced on creating ``mlflow.db`` (``table trace_info
already exists``) and one ran with MLflow off for good. Real processes, started together on one barrier file."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from mlflow import MlflowClient

CHILD = textwrap.dedent("""
    import json, logging, os, sys, time
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from hierclr.config.sections import TrackingSection
    from hierclr.runtime.tracking import Tracker
    uri, go, name = sys.argv[1], sys.argv[2], sys.argv[3]
    open(go + "." + name, "w").close()  # ready
    while not os.path.exists(go):  # every process imports MLflow first, then they start together
        time.sleep(0.005)
    tracker = Tracker.start(TrackingSection(uri=uri, experiment="shared"), run_name=name, params={"a": 1})
    tracker.log_metrics(0, {"loss/total": 1.0})
    enabled, run_id = tracker.enabled and tracker.status() == "RUNNING", tracker.run_id
    tracker.finish("FINISHED")
    print(json.dumps({"enabled": enabled, "run_id": run_id}))
""")


def test_runs_starting_together_on_a_fresh_store_all_track(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, uri, str(go), f"run{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"go.run{i}").exists() for i in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)  # every child has imported MLflow and waits at the barrier
    go.write_text("go")
    outs = [p.communicate(timeout=240) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "cannot be used" not in err and "tracking is off" not in err, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["enabled"] for r in results), results
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("shared")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1", "run2"]
    assert all(r.info.status == "FINISHED" for r in runs)
