"""Pure helpers of the contrastive method and the epoch loop: lr schedule, per-(epoch, rank) generators, objective choice,
metric averaging, count summing, the selection counter's switch and the sharded kNN (single process; no process
group but for one single-rank gloo group)."""
from __future__ import annotations

import itertools
import math
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hierclr.clustering import Prototypes, compose_assignments
from hierclr.config.pretrain import load_config
from hierclr.eval import knn_accuracy
from hierclr.losses import HCSCObjective, PCLObjective
from hierclr.methods.base import eval_due
from hierclr.methods.contrastive import (
    Contrastive,
    build_model,
    build_objective,
    distributed_knn,
    epoch_lr,
    selection_counter,
    uses_prototypes,
)
from hierclr.runtime.metrics import MetricAverager, sum_over_ranks
from hierclr.runtime.worker import step_generator

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ when to evaluate
def _due(method_cls, every: int, last: int, has_val: bool = True) -> list[int]:
    """The epochs ``method_cls.eval_due`` picks (its own state: the config and the run's has_val, nothing else)."""
    me = SimpleNamespace(cfg=load_config(None, [f"eval.every={every}"]), run=SimpleNamespace(has_val=has_val))
    return [e for e in range(last + 1) if method_cls.eval_due(me, e, last)]


def test_eval_every_zero_evaluates_only_at_the_end():
    """``eval.every=0``: documented as "only at the end" (it used to never run in pretraining)."""
    assert [e for e in range(5) if eval_due(0, e, 4)] == [4]
    assert _due(Contrastive, 0, last=4) == [4]
    assert _due(Contrastive, 0, last=2) == [2]  # --stop-after-epoch 2: the run's last epoch
    assert _due(Contrastive, 2, last=4) == [1, 3, 4]
    assert _due(Contrastive, 1, last=3) == [0, 1, 2, 3]
    assert _due(Contrastive, 0, last=4, has_val=False) == []  # no labelled split: no kNN


# ------------------------------------------------------------------------------------------ lr schedule
def test_cosine_schedule_by_hand():
    cfg = load_config(None, ["optim.epochs=10", "optim.batch_size=512", "optim.base_lr=0.03"])
    lr = 0.03 * 512 / 256  # 0.06
    expected = {0: lr, 1: lr * 0.5 * (1 + math.cos(math.pi / 10)), 5: lr * 0.5, 9: lr * 0.5 * (1 + math.cos(0.9 * math.pi))}
    for e, want in expected.items():
        assert epoch_lr(cfg, e) == pytest.approx(want, rel=1e-12), e
    assert epoch_lr(cfg, 0) == pytest.approx(0.06)
    assert epoch_lr(cfg, 5) == pytest.approx(0.03)
    assert epoch_lr(cfg, 10) == pytest.approx(0.0, abs=1e-15)  # the schedule's end point
    lrs = [epoch_lr(cfg, e) for e in range(10)]
    assert all(a > b for a, b in itertools.pairwise(lrs))  # strictly decreasing over the run


def test_constant_schedule():
    cfg = load_config(None, ["optim.epochs=10", "optim.schedule=constant", "optim.batch_size=128"])
    assert [epoch_lr(cfg, e) for e in (0, 3, 9)] == pytest.approx([0.03 * 128 / 256] * 3, rel=1e-12)
    assert epoch_lr(cfg, 7) == cfg.optim.lr


# ------------------------------------------------------------------------------------------ generators
def _draw(g: torch.Generator) -> torch.Tensor:
    return torch.rand(8, generator=g)


def test_step_generator_is_a_function_of_seed_epoch_rank():
    a = _draw(step_generator(0, 3, 1, CPU))
    b = _draw(step_generator(0, 3, 1, CPU))
    assert torch.equal(a, b)  # same (seed, epoch, rank): same draws, whatever happened in between
    torch.rand(100)
    assert torch.equal(_draw(step_generator(0, 3, 1, CPU)), a)  # independent of the global RNG
    others = [_draw(step_generator(*t, CPU)) for t in [(0, 4, 1), (0, 3, 0), (1, 3, 1), (0, 1, 3)]]
    for o in others:
        assert not torch.equal(o, a)
    # all epochs x ranks of a run draw distinct streams
    seeds = {step_generator(0, e, r, CPU).initial_seed() for e in range(20) for r in range(8)}
    assert len(seeds) == 160
    g = step_generator(0, 0, 0, CPU)
    assert isinstance(g, torch.Generator) and g.device == CPU


# ------------------------------------------------------------------------------------------- objectives
def test_build_objective_per_method():
    hcsc = load_config(None, ["method=hcsc", "loss.temperature=0.3", "loss.instance_selection=false"])
    obj = build_objective(hcsc)
    assert type(obj) is HCSCObjective and obj.cfg == hcsc.loss
    moco = load_config(None, ["method=moco"])
    assert type(build_objective(moco)) is HCSCObjective
    pcl = load_config(None, ["method=pcl", "loss.temperature=0.15", "pcl.num_negatives=77"])
    obj = build_objective(pcl)
    assert type(obj) is PCLObjective
    assert obj.temperature == 0.15 and obj.num_negatives == 77


def test_uses_prototypes():
    for e in range(6):
        assert not uses_prototypes(load_config(None, ["method=moco", "loss.warmup_epochs=0"]), e)
    for method in ("hcsc", "pcl"):
        cfg = load_config(None, [f"method={method}", "loss.warmup_epochs=3", "optim.epochs=6"])
        assert [uses_prototypes(cfg, e) for e in range(6)] == [False] * 3 + [True] * 3
        cfg0 = load_config(None, [f"method={method}", "loss.warmup_epochs=0"])
        assert uses_prototypes(cfg0, 0)


def test_build_model_follows_the_config():
    cfg = load_config(None, ["model.backbone=resnet10", "model.cifar_stem=true", "model.dim=16", "model.hidden_dim=32",
                             "model.queue_size=512", "model.momentum=0.9"])
    m = build_model(cfg)
    assert m.dim == 16 and m.queue_size == 512 and m.momentum == 0.9 and m.feature_dim == 512
    assert m.encoder_q.backbone.conv1.kernel_size == (3, 3)  # the CIFAR stem
    assert m(torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16))[0].shape == (2, 16)


# ---------------------------------------------------------------------------------------------- metrics
def test_metric_averager_single_process():
    assert not (dist.is_available() and dist.is_initialized())
    avg = MetricAverager()
    assert avg.mean() == {}
    steps = [{"loss/total": 3.0, "kept": 0.5}, {"loss/total": 1.0, "kept": 0.25}, {"loss/total": 2.5, "kept": 1.0}]
    for s in steps:
        t = {k: torch.tensor(v, dtype=torch.float64 if k == "kept" else torch.float32) for k, v in s.items()}
        avg.add(t)
        t["loss/total"].add_(100.0)  # the averager keeps its own copy
    out = avg.mean()
    assert avg.steps == 3
    assert set(out) == {"loss/total", "kept"}
    assert out["loss/total"] == pytest.approx((3.0 + 1.0 + 2.5) / 3, rel=1e-6)
    assert out["kept"] == pytest.approx((0.5 + 0.25 + 1.0) / 3, rel=1e-6)
    assert all(type(v) is float for v in out.values())


def test_metric_averager_detaches():
    w = torch.tensor(2.0, requires_grad=True)
    avg = MetricAverager()
    avg.add({"loss": w * 3})
    avg.add({"loss": w * 5})
    assert not avg.sums["loss"].requires_grad
    assert avg.mean() == {"loss": pytest.approx(8.0)}


def test_sum_over_ranks_single_process_is_the_identity():
    assert not (dist.is_available() and dist.is_initialized())
    counts = torch.tensor([[3, 1], [0, 2]])
    assert sum_over_ranks(counts) is counts


def test_sum_over_ranks_under_a_gloo_group_reduces_a_copy():
    """One gloo rank (a spawned pair of ranks costs minutes on the loaded CI machine): the all-reduce runs on int64
    counts beyond int32 and leaves the caller's tensor alone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        mine = torch.tensor([[3, 1], [2**40, 0]])
        total = sum_over_ranks(mine)
        assert total is not mine and total.dtype == torch.long and total.tolist() == [[3, 1], [2**40, 0]]
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


# --------------------------------------------------------------------------------------- selection counter
def _protos(levels: int) -> Prototypes:
    sizes = (4, 2, 1)[:levels]
    parents = [torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0])][: levels - 1]
    return Prototypes([torch.randn(m, 3) for m in sizes], parents, [torch.full((m,), 0.2) for m in sizes],
                      compose_assignments(torch.arange(6) % 4, parents))


def test_selection_counter_only_where_icsc_draws_masks_and_labels_exist():
    fine = torch.tensor([0, 1, 0, 1, 2, -1])
    protos = _protos(3)
    counter = selection_counter(load_config(None, []), protos, fine)
    assert counter is not None and counter.counts.shape == (3, 6) and counter.labels_by_id is fine
    single = selection_counter(load_config(None, ["loss.hierarchical_prototypes=false"]), protos, fine)
    assert single.counts.shape[0] == 1  # the objective truncates the prototypes to level 0
    assert selection_counter(load_config(None, []), None, fine) is None  # warm-up
    assert selection_counter(load_config(None, []), protos, None) is None  # no labels
    for off in (["eval.selection_quality=false"], ["method=pcl"], ["loss.instance_selection=false"],
                ["loss.instance_loss=false"]):
        assert selection_counter(load_config(None, off), protos, fine) is None, off


# ------------------------------------------------------------------------------------------------- kNN
def _features(n: int, centres: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    classes, dim = centres.shape
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + 0.9 * torch.randn(n, dim, generator=g) / math.sqrt(dim)
    return x.half().float(), y  # fp16-exact: distributed_knn ships val features as fp16


def test_distributed_knn_single_process_equals_knn_accuracy():
    assert not (dist.is_available() and dist.is_initialized())
    g = torch.Generator().manual_seed(0)
    classes, dim = 5, 16
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1)
    xt, yt = _features(200, centres, g)
    xv, yv = _features(60, centres, g)
    # unlabelled rows (-1) are excluded on both sides; the train ones sit right on val points
    yt_masked = yt.clone()
    yt_masked[:10] = -1
    xt[:10] = xv[:10]
    yv_masked = yv.clone()
    yv_masked[::7] = -1
    train = {"backbone": xt, "labels": yt_masked, "ids": torch.arange(200)}
    val = {"backbone": xv, "labels": yv_masked, "ids": torch.arange(60)}
    ks = (1, 5, 20)
    got = distributed_knn(train, val, ks=ks, num_classes=classes, temperature=0.1)

    tk, vk = yt_masked >= 0, yv_masked >= 0
    want = knn_accuracy(xt[tk], yt[tk], xv[vk], yv[vk], ks=ks, num_classes=classes, temperature=0.1)
    assert got == {f"knn/{k}": float(v) for k, v in want.items()}
    assert set(got) == {"knn/top1_k1", "knn/top1_k5", "knn/top1_k20", "knn/top1_best", "knn/best_k"}
    assert 0.4 < got["knn/top1_best"] <= 1.0  # separable classes: well above chance (0.2)
    # the accuracies are over the labelled val rows only
    n_val = int(vk.sum())
    assert all(abs(got[f"knn/top1_k{k}"] * n_val - round(got[f"knn/top1_k{k}"] * n_val)) < 1e-9 for k in ks)


def test_distributed_knn_empty_cases():
    g = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    xt, yt = _features(20, centres, g)
    xv, yv = _features(5, centres, g)
    no_train = {"backbone": xt, "labels": torch.full_like(yt, -1)}
    assert distributed_knn(no_train, {"backbone": xv, "labels": yv}, ks=(3,), num_classes=3, temperature=0.1) == {}
    no_val = {"backbone": xv, "labels": torch.full_like(yv, -1)}
    assert distributed_knn({"backbone": xt, "labels": yt}, no_val, ks=(3,), num_classes=3, temperature=0.1) == {}


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                                  ("fp16", torch.float16)])
def test_distributed_knn_ships_val_features_in_the_configured_precision(monkeypatch, precision, dtype):
    """Issue 17 item 6: fp32 by default (it was fp16 with no setting)."""
    from hierclr.methods import contrastive

    seen = []
    real = contrastive.knn_topk
    monkeypatch.setattr(contrastive, "knn_topk", lambda xt, yt, xv, k: seen.append(xv) or real(xt, yt, xv, k))
    g = torch.Generator().manual_seed(2)
    xt, yt = torch.randn(30, 8, generator=g), torch.randint(0, 3, (30,), generator=g)
    xv, yv = torch.randn(7, 8, generator=g) / 3, torch.randint(0, 3, (7,), generator=g)
    kw = {"ks": (3,), "num_classes": 3, "temperature": 0.1}
    if precision == "fp32":
        distributed_knn({"backbone": xt, "labels": yt}, {"backbone": xv, "labels": yv}, **kw)  # the default
    else:
        distributed_knn({"backbone": xt, "labels": yt}, {"backbone": xv, "labels": yv}, precision=precision, **kw)
    assert torch.equal(seen[0], xv.to(dtype).float())
    assert precision != "fp32" or not torch.equal(seen[0], xv.half().float())


def test_feature_precision_settings():
    from hierclr.config.evaluate import load_evaluate_config
    from hierclr.eval.precision import autocast_dtype, feature_dtype

    assert load_config(None, []).eval.feature_precision == "fp32"
    assert load_evaluate_config(None, ["source=x.pt"]).feature_precision == "fp32"
    assert load_config(None, ["eval.feature_precision=bf16"]).eval.feature_precision == "bf16"
    assert autocast_dtype("fp32", "cuda") is None and autocast_dtype("bf16", "cpu") is None
    assert autocast_dtype("bf16", "cuda") is torch.bfloat16 and autocast_dtype("fp16", "cuda") is torch.float16
    assert feature_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="feature precision must be one of"):
        feature_dtype("int8")
    with pytest.raises(Exception, match="feature_precision"):
        load_config(None, ["eval.feature_precision=fp64"])


def test_ami_due_every_n_e_steps_and_at_the_end():
    from hierclr.methods.contrastive import ami_due

    cfg = load_config(None, ["loss.warmup_epochs=2", "optim.epochs=12", "eval.ami_every=4"])
    assert [e for e in range(2, 12) if ami_due(cfg, e)] == [2, 6, 10, 11]
    assert all(ami_due(load_config(None, []), e) for e in range(200))
    assert load_config("imagenet-r50-200ep").eval.ami_every == 10
