"""Cooperative early stopping: ASHA's decisions go to the board, Tune is always told CONTINUE; and the sweep's
concurrency is capped to what the local Ray holds. Real Ray (the session's local instance), no training."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from hierclr.runtime.early_stop import CooperativeASHA, StopBoard, await_decision, board_name, close_board, get_board


def test_board_names_are_stable_per_sweep():
    assert board_name("/x/sweeps/a") == board_name("/x/sweeps/a") != board_name("/x/sweeps/b")


def test_cooperative_asha_posts_decisions_and_never_stops_a_trial_itself(ray_session):
    name = board_name(uuid.uuid4().hex)
    sched = CooperativeASHA(board=name, time_attr="epochs_done", max_t=4, grace_period=1, reduction_factor=2)
    sched.set_search_properties("acc", "max")
    t0, t1, t2 = (SimpleNamespace(trial_id=f"t{i}") for i in range(3))
    for t in (t0, t1, t2):
        sched.on_trial_add(None, t)
    cont = TrialScheduler.CONTINUE
    # rung 1 (epochs_done=1): t0 sets the bar (0.9), t1 falls below the top 1/2 -> ASHA would stop it
    assert sched.on_trial_result(None, t0, {"epochs_done": 1, "acc": 0.9}) == cont
    assert sched.on_trial_result(None, t1, {"epochs_done": 1, "acc": 0.1}) == cont
    # an epoch without the metric (kNN not measured) is a "continue" decision
    assert sched.on_trial_result(None, t2, {"epochs_done": 1}) == cont
    # the last epoch is never a stop: the trial ends by itself (ASHA would stop it at max_t otherwise)
    assert sched.on_trial_result(None, t0, {"epochs_done": 4, "acc": 0.95}) == cont
    # a repeated report of the stopping epoch (its checkpoint) keeps the decision
    assert sched.on_trial_result(None, t1, {"epochs_done": 1, "acc": 0.1}) == cont
    # results without the clock are ignored (no decision)
    assert sched.on_trial_result(None, t2, {"acc": 0.3}) == cont

    assert await_decision(name, "t0", 1, timeout_s=10) is False
    assert await_decision(name, "t1", 1, timeout_s=10) is True
    assert await_decision(name, "t2", 1, timeout_s=10) is False
    assert await_decision(name, "t0", 4, timeout_s=10) is False
    assert await_decision(name, "t2", 2, timeout_s=0.3) is False  # no decision in time: continue
    import ray

    assert ray.get(get_board(name).stopped.remote()) == ["t1"]
    # the scheduler pickles (Tune saves it with the experiment) and keeps its state
    import pickle

    again = pickle.loads(pickle.dumps(sched))
    assert again.on_trial_result(None, t1, {"epochs_done": 2, "acc": 0.99}) == cont
    assert await_decision(name, "t1", 2, timeout_s=10) is True
    close_board(name)


def test_board_actor_is_found_by_name(ray_session):
    import ray

    name = board_name(uuid.uuid4().hex)
    a = get_board(name)
    ray.get(a.decide.remote("x", 3, True))
    assert ray.get(get_board(name).decision.remote("x", 3)) is True
    assert ray.get(get_board(name).decision.remote("x", 2)) is None
    assert isinstance(StopBoard, ray.actor.ActorClass)
    close_board(name)


def test_concurrency_is_capped_to_what_a_local_ray_holds(ray_session, monkeypatch):
    from hierclr.config.sweep import SweepConfig
    from hierclr.runtime.sweep import _concurrency

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sweep = SweepConfig.model_validate({"base": "demo", "max_concurrent_trials": 3,
                                        "space": {"seed": {"grid": [0, 1, 2]}}})
    cfg = sweep.validate_space()  # 2 workers x 1 CPU + 1 data CPU + 1 clustering actor CPU = 4 (+0.01)
    said = []
    assert ray_session.cluster_resources()["CPU"] == 4
    with pytest.raises(ValueError, match="local_num_cpus"):
        _concurrency(sweep, cfg, said.append)  # 4.01 CPUs per trial do not fit 4
    small = cfg.model_copy(update={"service": cfg.service.model_copy(update={"cpus_per_actor": 0.0})})
    assert _concurrency(sweep, small, said.append) == 1 and "1 trial(s) at a time" in said[-1]
    one = sweep.model_copy(update={"max_concurrent_trials": 1})
    assert _concurrency(one, small, said.append) == 1
    tiny = small.model_copy(update={"resources": small.resources.model_copy(update={"num_workers": 1,
                                                                                    "cpus_per_worker": 0.5})})
    assert _concurrency(sweep, tiny, said.append) == 2  # 0.5 + 1 (data) + 0.01 CPUs per trial: two fit in 4
