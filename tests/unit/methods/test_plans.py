"""The method registry and the driver plans' pure parts: which plan a config gets, what one run holds,
which sections a checkpoint must share (no Ray)."""
from __future__ import annotations

import pytest

from hierclr.config.pretrain import load_config
from hierclr.config.supervised import load_supervised_config
from hierclr.methods import plan_class, plan_for
from hierclr.methods.contrastive import Contrastive, ContrastivePlan
from hierclr.methods.hcal import HCAL, HCALPlan
from hierclr.methods.supervised import Supervised, SupervisedPlan
from hierclr.runtime.driver import run_needs


def test_every_config_gets_its_plan_and_the_workers_find_it_by_name():
    for cfg, plan, method in ((load_config("demo"), ContrastivePlan, Contrastive),
                              (load_config("demo", ["method=moco"]), ContrastivePlan, Contrastive),
                              (load_supervised_config("digits-finetune"), SupervisedPlan, Supervised),
                              (load_supervised_config("digits-hcal"), HCALPlan, HCAL)):
        p = plan_for(cfg)
        assert type(p) is plan and p.method is method
        assert plan_class(p.name) is plan  # what train_loop_per_worker looks up
        assert isinstance(cfg, p.config_cls)
    with pytest.raises(KeyError, match="no training method plan named 'swav'"):
        plan_class("swav")


def test_run_needs_counts_workers_data_cpus_and_clustering_actors():
    cfg = load_config("demo", ["resources.num_workers=2", "resources.cpus_per_worker=1.5", "data.num_cpus=3",
                               "service.num_actors=2", "service.cpus_per_actor=0.5"])
    assert run_needs(cfg) == (2 * 1.5 + 3 + 2 * 0.5, 0.0)
    gpu = load_config("demo", ["resources.num_workers=1", "resources.use_gpu=true", "resources.gpus_per_worker=1",
                               "service.gpus_per_actor=0.25", "service.num_actors=2"])
    cpu, gpus = run_needs(gpu)
    assert gpus == pytest.approx(1 + 2 * 0.25) and cpu == 1 + 1  # 1 worker + 1 data CPU: GPU actors take no CPU
    moco = load_config("demo", ["method=moco", "resources.num_workers=1"])
    assert run_needs(moco) == (1 + 1, 0.0)  # MoCo starts no clustering actor
    sup = load_supervised_config("digits-finetune", ["resources.num_workers=2", "data.num_cpus=2"])
    assert run_needs(sup) == (2 * sup.resources.cpus_per_worker + 2, 0.0)


def test_a_checkpoint_must_share_the_model_and_objective_sections():
    assert ContrastivePlan.resume_sections == ("method", "model")
    assert SupervisedPlan.resume_sections == HCALPlan.resume_sections == ("task", "model", "loss", "hcal")
