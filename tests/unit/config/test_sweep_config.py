"""Sweep files: validation before Ray starts, aliases, overrides, trial configs; the summary table (no Ray)."""
from __future__ import annotations

import pytest
import yaml

from hierclr.config.pretrain import load_config
from hierclr.config.sweep import SweepConfig, list_sweep_presets, load_sweep
from hierclr.runtime.sweep_summary import TrialRow, best_trial, table_csv, table_text


def _write(tmp_path, tree, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(tree, sort_keys=False))
    return p


def test_builtin_sweeps_validate_every_value():
    assert {"demo-sweep", "cifar100-hierarchy", "imagenet-table6"} <= set(list_sweep_presets())
    for name in list_sweep_presets():
        sweep = load_sweep(name)
        cfg = sweep.validate_space()
        if sweep.scheduler.type == "asha":
            assert cfg.optim.epochs >= sweep.asha_grace_period() > sweep.max_warmup_epochs()
    assert load_sweep("demo-sweep").num_trials == 6
    assert load_sweep("imagenet-table6").space["clustering.sizes"].grid[3] == [6000]


def test_alias_overrides_and_trial_config(tmp_path):
    p = _write(tmp_path, {"name": "t1", "base": "demo", "set": {"optim.epochs": 2},
                          "space": {"hierarchy.sizes": {"grid": [[16, 8], [12]]},
                                    "loss.temperature": {"choice": [0.1, 0.3]},
                                    "clustering.temperature": {"loguniform": [0.05, 0.5]}}})
    sweep = load_sweep(p, ["num_samples=3", "set.optim.batch_size=32", "set.model.queue_size=256"])
    assert list(sweep.space) == ["clustering.sizes", "loss.temperature", "clustering.temperature"]
    assert sweep.num_samples == 3 and sweep.num_trials == 6
    cfg = sweep.trial_config({"clustering.sizes": [12], "loss.temperature": 0.3, "clustering.temperature": 0.1})
    assert cfg.clustering.sizes == (12,) and cfg.loss.temperature == 0.3 and cfg.clustering.temperature == 0.1
    assert cfg.optim.epochs == 2 and cfg.optim.batch_size == 32 and cfg.model.queue_size == 256
    # everything else is the base preset's
    base = load_config("demo")
    assert cfg.model.backbone == base.model.backbone and cfg.data.train == base.data.train


@pytest.mark.parametrize("space, match", [
    ({"loss.temprature": {"grid": [0.1]}}, "temprature"),                      # typo in a field name
    ({"loss.temperature": {"grid": [0.1, -1.0]}}, r"space.loss.temperature: value -1.0"),  # a bad value
    ({"clustering.sizes": {"grid": [[16, 8], [8, 16]]}}, r"space.clustering.sizes: value \[8, 16\]"),
    ({"loss.temperature": {"grid": [0.1], "choice": [0.2]}}, "exactly one of"),
    ({"loss.temperature": {"uniform": [0.3, 0.1]}}, "low must be below high"),
    ({"optim.lr": {"loguniform": [0.0, 0.1]}}, "positive"),
    ({"checkpoint.storage_path": {"grid": ["/x"]}}, "set by the sweep"),
    ({}, "search space is empty"),
])
def test_bad_spaces_fail_before_ray_with_the_field_named(tmp_path, space, match):
    p = _write(tmp_path, {"name": "bad", "base": "demo", "space": space})
    with pytest.raises(ValueError, match=match):
        load_sweep(p).validate_space()


def test_bad_sweep_options(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_sweep(_write(tmp_path, {"name": "a b/c", "space": {"seed": {"grid": [0]}}}))
    with pytest.raises(ValueError, match="mode"):
        load_sweep(_write(tmp_path, {"mode": "biggest", "space": {"seed": {"grid": [0]}}}))
    with pytest.raises(ValueError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")
    s = load_sweep(_write(tmp_path, {"base": "demo", "scheduler": {"grace_period": 9}, "space": {"seed": {"grid": [0]}}}))
    with pytest.raises(ValueError, match="grace_period"):
        s.validate_space()


def test_asha_grace_period_must_pass_the_warmup(tmp_path):
    """ASHA's first rung after grace_period epochs must see at least one epoch in which the clustering acted:
    demo base with 2 warm-up epochs of 6 -> grace 2 is refused, 3 is accepted, and left out it is 3."""
    def sweep(**extra):
        return load_sweep(_write(tmp_path, {"base": "demo", "set": {"optim.epochs": 6, "loss.warmup_epochs": 2},
                                            "space": {"seed": {"grid": [0]}}, **extra}))

    assert sweep().max_warmup_epochs() == 2
    with pytest.raises(ValueError, match=r"grace_period \(2\) must exceed the trials' 2 warm-up epochs.*>= 3"):
        sweep(scheduler={"grace_period": 2}).validate_space()
    assert sweep(scheduler={"grace_period": 3}).validate_space().loss.warmup_epochs == 2
    default = sweep()
    default.validate_space()
    assert default.scheduler.grace_period is None and default.asha_grace_period() == 3
    # the user who scores warm-up epochs too may stop on them
    assert sweep(scheduler={"grace_period": 2}, skip_warmup=False).asha_grace_period() == 2
    assert sweep(scheduler={"grace_period": 2}, skip_warmup=False).validate_space().loss.warmup_epochs == 2
    # FIFO has no rungs
    assert sweep(scheduler={"type": "fifo", "grace_period": 1}).validate_space().optim.epochs == 6


def test_asha_grace_period_counts_a_swept_warmup_at_its_largest(tmp_path):
    s = load_sweep(_write(tmp_path, {"base": "demo", "set": {"optim.epochs": 8},
                                     "space": {"loss.warmup_epochs": {"grid": [1, 4]}, "seed": {"grid": [0]}}}))
    assert s.max_warmup_epochs() == 4 and s.asha_grace_period() == 5
    # MoCo v2 (no clustering) and an all-warm-up run have no warm-up to wait for (warmup_epochs() == 0)
    moco = load_sweep(_write(tmp_path, {"base": "demo", "set": {"method": "moco", "loss.warmup_epochs": 3},
                                        "space": {"seed": {"grid": [0]}}}, "m.yaml"))
    assert moco.max_warmup_epochs() == 0 and moco.asha_grace_period() == 1


def test_base_file_next_to_the_sweep_file(tmp_path):
    (tmp_path / "mybase.yaml").write_text("base: demo\nname: mine\noptim: {epochs: 2}\n")
    s = load_sweep(_write(tmp_path, {"base": "mybase.yaml", "space": {"seed": {"grid": [0, 1]}}}))
    assert s.validate_space().name == "mine"


def test_to_tune_kinds():
    from ray import tune

    s = SweepConfig.model_validate({"space": {"a": {"grid": [1, 2]}, "b": {"choice": [1]}, "c": {"uniform": [0, 1]},
                                              "d": {"loguniform": [1e-3, 1]}, "e": {"randint": [1, 5]},
                                              "f": {"value": 3}}})
    t = {k: d.to_tune() for k, d in s.space.items()}
    assert t["a"] == tune.grid_search([1, 2]) and t["f"] == 3
    assert isinstance(t["c"], tune.search.sample.Float) and isinstance(t["e"], tune.search.sample.Integer)
    assert s.space["e"].candidates() == [1, 4]


def test_summary_best_and_tables():
    rows = [TrialRow("a", {"clustering.sizes": [16, 8], "loss.temperature": 0.1}, "FINISHED", 2, 0.61, 1),
            TrialRow("b", {"clustering.sizes": [12], "loss.temperature": 0.2}, "FAILED", 0, None, error="ValueError: x"),
            TrialRow("c", {"clustering.sizes": [12], "loss.temperature": 0.1}, "STOPPED", 1, 0.70, 0),
            TrialRow("d", {"clustering.sizes": [9], "loss.temperature": 0.1}, "FAILED", 1, 0.99, 0)]
    assert best_trial(rows, "max").trial_id == "c"  # a failed trial is never the best, even with a value
    assert best_trial(rows, "min").trial_id == "a"
    assert best_trial(rows[1:2], "max") is None
    text = table_text(rows, "knn/top1_best", ["clustering.sizes", "loss.temperature"])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["trial", "clustering.sizes", "loss.temperature", "knn/top1_best"]
    assert lines[2].split() == ["a", "[16,8]", "0.1", "0.61", "2", "FINISHED"]
    assert lines[3].split() == ["b", "[12]", "0.2", "-", "0", "FAILED"]
    csv_text = table_csv(rows, "knn/top1_best", ["clustering.sizes", "loss.temperature"])
    assert csv_text.splitlines()[0] == ("trial,clustering.sizes,loss.temperature,knn/top1_best,score_epoch,epochs,"
                                        "status,mlflow_run_id,error")
    assert csv_text.splitlines()[2].startswith("b,[12],0.2,,,0,FAILED,,ValueError: x")
