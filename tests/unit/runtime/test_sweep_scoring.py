"""How a sweep scores its trials (:mod:`hierclr.runtime.sweep_summary`): Tune's scopes, warm-up left out, ties
warned about, and the parent run's params (no Ray started)."""
from __future__ import annotations

import math
import random

import pytest

from hierclr.config.sweep import SweepConfig, warmup_epochs
from hierclr.runtime.sweep_summary import SCOPES, TrialRow, best_trial, score_history, table_text, tied_with

# one trial's kNN per epoch: epochs 0-1 are warm-up (no prototypes), where it peaked
HISTORY = [(0, 0.30), (1, 0.32), (2, 0.25), (3, 0.27), (4, 0.26)]


@pytest.mark.parametrize("scope, mode, expected", [
    ("last", "max", (4, 0.26)),
    ("last", "min", (4, 0.26)),
    ("all", "max", (3, 0.27)),          # the best epoch after warm-up, not warm-up's 0.32
    ("all", "min", (2, 0.25)),
    ("avg", "max", (4, (0.25 + 0.27 + 0.26) / 3)),
    ("last-5-avg", "max", (4, (0.25 + 0.27 + 0.26) / 3)),
    ("last-10-avg", "min", (4, (0.25 + 0.27 + 0.26) / 3)),
])
def test_scopes_leave_out_warmup(scope, mode, expected):
    epoch, value = score_history(HISTORY, mode, scope, warmup_epochs=2)
    assert epoch == expected[0] and value == pytest.approx(expected[1], rel=1e-12)


def test_without_warmup_skip_the_warmup_peak_wins_scope_all():
    assert score_history(HISTORY, "max", "all") == (1, 0.32)
    assert score_history(HISTORY, "max", "avg")[1] == pytest.approx(sum(v for _, v in HISTORY) / 5)


def test_last_n_avg_takes_the_last_n_scored_epochs():
    history = [(e, float(e)) for e in range(12)]
    assert score_history(history, "max", "last-5-avg", warmup_epochs=3) == (11, (7 + 8 + 9 + 10 + 11) / 5)
    assert score_history(history, "max", "last-10-avg", warmup_epochs=3) == (11, sum(range(3, 12)) / 9)


def test_epochs_without_the_metric_and_all_warmup_trials():
    # kNN every 2 epochs: NaN = the metric was absent; order of the history does not matter
    history = [(3, 0.4), (0, 0.1), (1, math.nan), (2, 0.3), (4, None)]
    assert score_history(history, "max", "last") == (3, 0.4)
    assert score_history(history, "max", "avg", warmup_epochs=1) == (3, pytest.approx(0.35))
    assert score_history([(0, 0.9)], "max", "last", warmup_epochs=1) == (None, None)  # stopped in warm-up
    assert score_history([], "min", "all") == (None, None)
    with pytest.raises(ValueError, match="scope must be one of"):
        score_history(HISTORY, "max", "best")


@pytest.mark.parametrize("scope", SCOPES)
def test_same_scores_as_tunes_own_metric_analysis(scope):
    """Without warm-up, a trial's score is exactly what Tune's get_best_result(scope=...) compares."""
    from ray.tune.experiment import Trial

    rng = random.Random(0)
    for mode in ("max", "min"):
        for n in (1, 4, 7, 13):
            history = [(e, rng.random()) for e in range(n)]
            trial = Trial("__fake", stub=True, trial_id="t")
            for e, v in history:
                trial.update_last_result({"m": v, "epoch": e, "training_iteration": e + 1})
            tune_score = trial.metric_analysis["m"][mode if scope == "all" else scope]
            assert score_history(history, mode, scope)[1] == pytest.approx(tune_score, rel=1e-12), (mode, n)


def _row(trial: str, score: float | None, status: str = "FINISHED") -> TrialRow:
    return TrialRow(trial, {"clustering.sizes": [16]}, status, 3, score, 2 if score is not None else None)


def test_ties_are_reported_and_the_first_listed_wins():
    rows = [_row("a", 0.26), _row("b", 0.272), _row("c", 0.272 * (1 + 1e-9)), _row("d", 0.272, "FAILED"),
            _row("e", None)]
    best = best_trial(rows, "max")
    assert best.trial_id == "c"  # strictly larger, within the tie tolerance of b
    assert [r.trial_id for r in tied_with(rows, best)] == ["b"]  # a failed trial is not a contender
    rows[2] = _row("c", 0.272)
    best = best_trial(rows, "max")
    assert best.trial_id == "b" and [r.trial_id for r in tied_with(rows, best)] == ["c"]
    assert tied_with([_row("a", 0.26), _row("b", 0.27)], best_trial([_row("a", 0.26), _row("b", 0.27)], "max")) == []
    lo = best_trial(rows, "min")
    assert lo.trial_id == "a" and tied_with(rows, lo) == []
    assert tied_with(rows, None) == []


def test_table_names_the_scope():
    text = table_text([_row("a", 0.26)], "knn/top1_best", ["clustering.sizes"], "last-5-avg")
    assert text.splitlines()[0].split()[:4] == ["trial", "clustering.sizes", "knn/top1_best", "(last-5-avg)"]


def test_warmup_epochs_of_each_kind_of_trial():
    sweep = SweepConfig.model_validate({"base": "demo", "set": {"optim.epochs": 4},
                                        "space": {"loss.warmup_epochs": {"grid": [0, 2, 4]}}})
    assert sweep.scope == "last" and sweep.skip_warmup
    assert [warmup_epochs(sweep.trial_config({"loss.warmup_epochs": w})) for w in (0, 2, 4)] == [0, 2, 0]  # 4: MoCo
    moco = sweep.trial_config({"loss.warmup_epochs": 2, "method": "moco"})
    assert warmup_epochs(moco) == 0  # no clustering: no epoch is warm-up
    finetune = SweepConfig.model_validate({"command": "finetune", "base": "digits-finetune",
                                           "space": {"seed": {"grid": [0]}}})
    assert warmup_epochs(finetune.trial_config({"seed": 0})) == 0
    with pytest.raises(ValueError, match="scope"):
        SweepConfig.model_validate({"scope": "best", "space": {"seed": {"grid": [0]}}})


def test_a_fifo_sweeps_parent_has_no_asha_params():
    from hierclr.runtime.sweep import _parent_params

    space = {"seed": {"grid": [0]}}
    fifo = _parent_params(SweepConfig.model_validate({"space": space, "scheduler": {"type": "fifo"}}))
    asha = _parent_params(SweepConfig.model_validate({"space": space}))
    assert fifo["scheduler.type"] == "fifo" and not any(k.startswith("scheduler.") and k != "scheduler.type"
                                                         for k in fifo)
    assert {"scheduler.grace_period", "scheduler.reduction_factor"} <= set(asha)
    assert asha["scheduler.grace_period"] == 2  # the default resolved: demo's 1 warm-up epoch + 1
    assert fifo["scope"] == asha["scope"] == "last" and fifo["skip_warmup"] is True
