"""The tests' fault plan (hierclr.runtime.faults): matching, counting across calls, and a no-op without a plan."""
from __future__ import annotations

import pytest

from hierclr.runtime.faults import PLAN_ENV, InjectedFault, trigger, write_plan


def test_without_a_plan_trigger_does_nothing(monkeypatch):
    monkeypatch.delenv(PLAN_ENV, raising=False)
    trigger("train_step", epoch=0, rank=0, step=1)


def test_a_fault_fires_only_where_every_key_matches_and_only_times_times(tmp_path, monkeypatch):
    plan = tmp_path / "plan.json"
    monkeypatch.setenv(PLAN_ENV, str(plan))
    write_plan(plan, [{"point": "train_step", "epoch": 2, "rank": 1, "times": 2}])
    trigger("train_step", epoch=2, rank=0, step=1)  # other rank
    trigger("train_step", epoch=1, rank=1, step=1)  # other epoch
    trigger("kmeans_actor", actor=1, method="load")  # other point
    for step in (1, 2):  # any step: the plan does not name one
        with pytest.raises(InjectedFault, match="train_step"):
            trigger("train_step", epoch=2, rank=1, step=step)
    trigger("train_step", epoch=2, rank=1, step=3)  # spent after 2 firings
    assert sorted(p.name for p in tmp_path.glob("plan.json.*")) == ["plan.json.0.0", "plan.json.0.1"]


def test_rewriting_the_plan_clears_spent_markers_and_checks_points(tmp_path, monkeypatch):
    plan = tmp_path / "plan.json"
    monkeypatch.setenv(PLAN_ENV, str(plan))
    write_plan(plan, [{"point": "kmeans_actor", "actor": 0, "method": "cluster"}])
    with pytest.raises(InjectedFault):
        trigger("kmeans_actor", actor=0, method="cluster")
    trigger("kmeans_actor", actor=0, method="cluster")  # spent
    write_plan(plan, [{"point": "kmeans_actor", "actor": 0, "method": "cluster"}])
    with pytest.raises(InjectedFault):
        trigger("kmeans_actor", actor=0, method="cluster")  # armed again
    with pytest.raises(ValueError, match="point must be one of"):
        write_plan(plan, [{"point": "somewhere"}])
