"""``resources.profile: local`` / ``--local``: the sizing rule against fake machines, and how the loader applies it
(over the preset, under ``--set``)."""
from __future__ import annotations

import pytest

from hierclr.cli import build_parser
from hierclr.commands.common import overrides
from hierclr.config import profiles
from hierclr.config.pretrain import load_config
from hierclr.config.profiles import local_resources
from hierclr.config.supervised import load_supervised_config
from hierclr.runtime.driver import run_needs


@pytest.mark.parametrize(("cpus", "gpus", "batch", "want"), [
    (2, 0, 256, {"resources.num_workers": 1, "resources.cpus_per_worker": 1, "data.num_cpus": 1,
                 "resources.local_num_cpus": 3, "resources.use_gpu": False}),
    (8, 0, 256, {"resources.num_workers": 1, "resources.cpus_per_worker": 5, "data.num_cpus": 2,
                 "resources.local_num_cpus": 8}),
    (16, 1, 256, {"resources.num_workers": 1, "resources.cpus_per_worker": 7, "data.num_cpus": 8,
                  "resources.use_gpu": True, "resources.gpus_per_worker": 1}),
    (16, 4, 256, {"resources.num_workers": 4, "resources.cpus_per_worker": 1, "data.num_cpus": 11}),
    (16, 3, 256, {"resources.num_workers": 2}),  # 3 workers would not divide the global batch
    (64, 1, 256, {"resources.cpus_per_worker": 8, "data.num_cpus": 55}),
])
def test_local_sizing_of_fake_machines(cpus, gpus, batch, want):
    got = local_resources(cpus, gpus, batch_size=batch, clustering=True)
    assert {k: got[k] for k in want} == want
    assert got["service.num_actors"] == 1 and got["service.gpus_per_actor"] == 0
    held = got["resources.num_workers"] * got["resources.cpus_per_worker"] + got["data.num_cpus"] + 1
    assert held == got["resources.local_num_cpus"] == max(cpus, held)  # every CPU used, none double-booked


def test_without_clustering_no_actor_is_sized():
    got = local_resources(4, 0, clustering=False)
    assert "service.num_actors" not in got and got["resources.cpus_per_worker"] + got["data.num_cpus"] == 4


def test_the_loader_sizes_any_preset_and_set_wins(monkeypatch):
    monkeypatch.setattr(profiles, "machine", lambda: (6, 0))
    cfg = load_config("cifar100-r18", ["resources.profile=local"])  # the preset asks for a GPU and 8 data CPUs
    res = cfg.resources
    assert (res.profile, res.use_gpu, res.num_workers, res.cpus_per_worker, cfg.data.num_cpus) == (
        "local", False, 1, 4, 1)
    assert run_needs(cfg) == (6, 0) and res.local_num_cpus == 6
    assert cfg.model.backbone == "resnet18" and cfg.optim.epochs == 200  # only resources change
    mine = load_config("cifar100-r18", ["resources.profile=local", "data.num_cpus=2"])
    assert mine.data.num_cpus == 2 and mine.resources.cpus_per_worker == 4
    assert load_config("cifar100-r18").resources.use_gpu  # fixed (the default): the preset as written
    monkeypatch.setattr(profiles, "machine", lambda: (8, 2))
    sup = load_supervised_config("cifar10-finetune", ["resources.profile=local"])  # no clustering actor
    assert (sup.resources.num_workers, sup.resources.use_gpu, sup.resources.gpus_per_worker) == (2, True, 1)
    assert run_needs(sup) == (8, 2)


def test_the_local_flag_is_the_profile_and_set_comes_after():
    args = build_parser().parse_args(["pretrain", "--local", "--set", "resources.profile=fixed"])
    assert overrides(args) == ["resources.profile=local", "resources.profile=fixed"]
    assert overrides(build_parser().parse_args(["hcal", "--set", "optim.epochs=2"])) == ["optim.epochs=2"]
