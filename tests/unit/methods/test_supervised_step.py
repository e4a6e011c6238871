"""The supervised modes' pieces without Ray: config, schedule, parameter groups, the step losses, class-mean
prototypes, evaluation readout (the global batch gather under a real 2-process gloo group: test_two_ranks.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hierclr.config.supervised import list_supervised_presets, load_supervised_config
from hierclr.losses.supcon import supcon_loss
from hierclr.methods.hcal import class_means
from hierclr.methods.supervised import build_network, evaluate, lr_factor, param_groups
from hierclr.methods.supervised_step import finetune_loss, hcal_step_loss

LEVEL_MAP = np.array([[0, 0], [1, 0], [2, 1], [3, 1], [4, 2]])  # 5 classes -> 3 groups


def cfg_of(*sets: str, preset: str = "digits-finetune", task=None):
    return load_supervised_config(preset, ["model.backbone=resnet10", *sets], task=task)


# ---------------------------------------------------------------------------------------------- config
def test_presets_validate_and_bad_values_name_the_field():
    names = list_supervised_presets()
    assert {"digits-finetune", "digits-hcal", "cifar10-finetune", "cifar10-hcal", "cifar10-clce",
            "imagenet-r50-finetune", "imagenet-r50-hcal"} <= set(names)
    for name in names:
        cfg = load_supervised_config(name)
        assert cfg.task in ("finetune", "hcal")
    with pytest.raises(ValueError, match="loss.name"):
        cfg_of("loss.name=triplet")
    with pytest.raises(ValueError, match="loss.epsilon"):
        cfg_of("loss.name=varcon", "loss.epsilon=0.2")
    with pytest.raises(ValueError, match="data.val is required"):
        cfg_of("data.val=null")
    with pytest.raises(ValueError, match="init_head needs model.init"):
        cfg_of("loss.name=supcon", "model.init_head=true")
    with pytest.raises(ValueError, match="class_means needs model.init"):
        cfg_of("hcal.init_prototypes=class_means", preset="digits-hcal")
    with pytest.raises(ValueError, match="task is 'hcal'"):
        load_supervised_config("digits-hcal", task="finetune")
    assert cfg_of("loss.name=clce").loss.contrastive_temperature() == 0.5
    clce = load_supervised_config("cifar10-clce")  # the CLCE fine-tuning preset: the paper's tau, lambda, features
    assert (clce.loss.name, clce.loss.temperature, clce.loss.lam, clce.loss.clce_features) == ("clce", 0.5, 0.9,
                                                                                              "encoder")
    assert clce.optim.batch_size <= 128 and clce.optim.lr <= 0.01
    assert cfg_of("loss.name=supcon").loss.contrastive_temperature() == 0.1


def test_lr_schedule_warmup_then_cosine():
    cfg = cfg_of("optim.epochs=10", "optim.warmup_epochs=2")
    got = [lr_factor(cfg, e) for e in range(10)]
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * (e - 2) / 8)) for e in range(2, 10)]
    assert got == pytest.approx(want)


def test_hcal_param_groups_give_each_level_its_prototype_lr():
    cfg = cfg_of("hcal.prototype_lr=0.05", "hcal.prototype_lr_factor=2.0", "optim.base_lr=0.04",
                 "optim.batch_size=64", "optim.weight_decay=0.1", preset="digits-hcal")
    net = build_network(cfg, LEVEL_MAP)
    groups = {g["name"]: g for g in param_groups(net, cfg)}
    assert groups["backbone"]["lr"] == pytest.approx(0.01)
    assert groups["prototypes0"]["lr"] == pytest.approx(0.05)
    assert groups["prototypes1"]["lr"] == pytest.approx(0.10)
    assert groups["prototypes0"]["weight_decay"] == 0.0
    # one plain SGD step moves level l's prototypes by exactly lr_l * grad
    opt = torch.optim.SGD(param_groups(net, cfg), lr=1.0, momentum=0.0, weight_decay=0.0)
    for g in opt.param_groups:
        g["weight_decay"] = 0.0
    x = torch.randn(6, 3, 32, 32)
    labels = torch.as_tensor(LEVEL_MAP[[0, 1, 2, 3, 4, 0]])
    before = [p.detach().clone() for p in net.head.prototypes]
    loss, _ = hcal_step_loss(net, cfg, x, labels, generator=torch.Generator().manual_seed(0))
    opt.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in net.head.prototypes]
    opt.step()
    for level, lr in ((0, 0.05), (1, 0.10)):
        assert torch.allclose(before[level] - net.head.prototypes[level].detach(), lr * grads[level], atol=1e-7)


def test_frozen_backbone_trains_only_heads():
    cfg = cfg_of("model.freeze_backbone=true")
    net = build_network(cfg, LEVEL_MAP)
    names = [g["name"] for g in param_groups(net, cfg)]
    assert names == ["heads"]
    assert not any(p.requires_grad for p in net.backbone.parameters())


# ---------------------------------------------------------------------------------------------- losses
def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2][:n])


def test_finetune_supcon_is_supcon_plus_a_probe_that_cannot_train_the_trunk():
    cfg = cfg_of("loss.name=supcon", "loss.temperature=0.2")
    torch.manual_seed(0)
    net = build_network(cfg, LEVEL_MAP)
    x, y = _batch()
    loss, metrics = finetune_loss(net, cfg, x, y)
    out = net(x, probe_only=True)
    want = supcon_loss(out.z, y, temperature=0.2) + F.cross_entropy(out.logits, y)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert metrics["loss/supcon"].item() == pytest.approx(supcon_loss(out.z, y, temperature=0.2).item(), rel=1e-5)
    # the probe's CE alone leaves the trunk without gradient
    net.zero_grad()
    F.cross_entropy(net(x, probe_only=True).logits, y).backward()
    assert all(p.grad is None or not p.grad.any() for p in net.backbone.parameters())
    assert net.classifier.weight.grad.abs().sum() > 0


def test_finetune_ce_has_no_projection_head_and_clce_mixes_terms():
    ce_cfg = cfg_of("loss.name=ce")
    assert build_network(ce_cfg, LEVEL_MAP).head is None
    cfg = cfg_of("loss.name=clce", "loss.lam=0.9")
    torch.manual_seed(0)
    net = build_network(cfg, LEVEL_MAP)
    x, y = _batch()
    loss, metrics = finetune_loss(net, cfg, x, y)
    assert loss.item() == pytest.approx(0.1 * metrics["loss/ce"].item() + 0.9 * metrics["loss/lacln"].item(), rel=1e-5)


def test_clce_reads_the_normalised_encoder_output_by_default():
    """CLCE paper Sec. 3.3: LACLN on the L2-normalised encoder output, CE on the linear head; no projection."""
    from hierclr.losses.clce import lacln_loss

    cfg = cfg_of("loss.name=clce")
    assert cfg.loss.clce_features == "encoder"
    torch.manual_seed(0)
    net = build_network(cfg, LEVEL_MAP)
    assert net.head is None
    x, y = _batch()
    loss, metrics = finetune_loss(net, cfg, x, y)
    out = net(x)
    lacln = lacln_loss(F.normalize(out.features, dim=1), y, temperature=0.5)
    assert metrics["loss/lacln"].item() == pytest.approx(lacln.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.1 * F.cross_entropy(out.logits, y).item() + 0.9 * lacln.item(), rel=1e-5)
    # the option: a projection head, LACLN on its output
    proj = cfg_of("loss.name=clce", "loss.clce_features=projection")
    torch.manual_seed(0)
    net = build_network(proj, LEVEL_MAP)
    _, metrics = finetune_loss(net, proj, x, y)
    assert metrics["loss/lacln"].item() == pytest.approx(lacln_loss(net(x).z, y, temperature=0.5).item(), rel=1e-5)
    with pytest.raises(ValueError, match="loss.name=clce has no projection head.*clce_features=projection"):
        cfg_of("loss.name=clce", "model.init=x.pt", "model.init_head=true")


# ------------------------------------------------------------------------------- HCAL init and readout
def test_class_means_match_a_loop_and_leave_absent_classes_nan():
    cfg = cfg_of(preset="digits-hcal")
    torch.manual_seed(0)
    net = build_network(cfg, LEVEL_MAP).eval()
    x = torch.randn(10, 3, 32, 32)
    labels = torch.tensor([0, 1, 1, 2, 3, 0, -1, 2, 3, 1])  # class 4 absent, one unlabelled row
    batches = [(x[:4], torch.arange(4), labels[:4]), (x[4:], torch.arange(4, 10), labels[4:])]
    got = class_means(net, batches, 5, torch.device("cpu"))
    with torch.no_grad():
        feats = net(x)
    for c in range(4):
        assert torch.allclose(got[c], feats[labels == c].mean(0), atol=1e-6)
    assert torch.isnan(got[4]).all()
    net.head.init_prototypes(got, LEVEL_MAP)
    p0 = net.head.level_prototypes(0)
    assert torch.allclose(p0[1], F.normalize(feats[labels == 1].mean(0), dim=0), atol=1e-5)


def test_evaluate_scores_levels_top5_and_hvr_single_process():
    cfg = cfg_of(preset="digits-hcal")
    torch.manual_seed(0)
    net = build_network(cfg, LEVEL_MAP)
    x = torch.randn(7, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4, 2, -1])
    level_map = torch.as_tensor(LEVEL_MAP)
    parents = [torch.tensor([0, 0, 1, 1, 2])]
    out = evaluate(net, cfg, [(x, torch.arange(7), labels)], level_map, parents, torch.device("cpu"))
    assert net.training  # evaluate restores the mode
    with torch.no_grad():
        pred = net.eval().head.predict(net(x[:6]), readout="independent")
    true = LEVEL_MAP[labels[:6].numpy()]
    assert out["val/samples"] == 6
    assert out["acc/level0"] == pytest.approx(float((pred[:, 0].numpy() == true[:, 0]).mean()))
    assert out["acc/level1"] == pytest.approx(float((pred[:, 1].numpy() == true[:, 1]).mean()))
    viol = float((np.array([0, 0, 1, 1, 2])[pred[:, 0].numpy()] != pred[:, 1].numpy()).mean())
    assert out["val/hvr"] == pytest.approx(viol)
    fcfg = cfg_of()
    fnet = build_network(fcfg, LEVEL_MAP)
    fout = evaluate(fnet, fcfg, [(x, torch.arange(7), labels)], level_map, parents, torch.device("cpu"))
    with torch.no_grad():
        logits = fnet.eval()(x[:6]).logits
    assert fout["acc/top1"] == pytest.approx(float((logits.argmax(1) == labels[:6]).float().mean()))
    assert fout["acc/top5"] == pytest.approx(float((logits.topk(5).indices == labels[:6, None]).any(1).float().mean()))
    assert "val/hvr" not in fout  # finetune's coarse levels are the fine prediction's ancestors


# ------------------------------------------------------------------------------- evaluation protocols
def test_step_schedule_and_its_validation():
    cfg = cfg_of("optim.epochs=100", "optim.schedule=step", "optim.milestones=[60,80]")
    assert [lr_factor(cfg, e) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="optim.milestones"):
        cfg_of("optim.epochs=10", "optim.schedule=step", "optim.milestones=[8,4]")
    with pytest.raises(ValueError, match="optim.milestones"):
        cfg_of("optim.epochs=10", "optim.schedule=step")


def test_linear_protocol_preset_freezes_the_trunk_in_eval_mode_and_inits_the_classifier():
    cfg = load_supervised_config("imagenet-r50-linear", ["model.backbone=resnet10", "model.cifar_stem=true"])
    assert cfg.model.freeze_backbone and cfg.optim.lr == 5.0 and cfg.optim.weight_decay == 0.0
    assert cfg.data.transform_config().train.global_views == 1
    torch.manual_seed(0)
    net = build_network(cfg, LEVEL_MAP)
    w = net.classifier.weight.detach().clone()
    assert abs(float(w.std()) - 0.01) < 0.002 and not net.classifier.bias.any()
    opt = torch.optim.SGD(param_groups(net, cfg), lr=1.0)
    bn = net.backbone.bn1
    before = (bn.running_mean.clone(), net.backbone.conv1.weight.detach().clone())
    net.train()
    net.backbone.eval()  # what the loop does every epoch with freeze_backbone
    x, y = torch.randn(8, 3, 32, 32) * 3 + 1, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    loss, _ = finetune_loss(net, cfg, x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.equal(bn.running_mean, before[0])  # BatchNorm statistics untouched
    assert torch.equal(net.backbone.conv1.weight, before[1])  # trunk untouched
    assert not torch.equal(net.classifier.weight.detach(), w)  # the classifier trained


def test_sync_bn_option_converts_every_batchnorm_and_needs_gpu_workers():
    cfg = cfg_of("model.sync_bn=true", "resources.use_gpu=true")
    net = build_network(cfg, LEVEL_MAP)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, torch.nn.SyncBatchNorm) for m in bns)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in build_network(cfg_of(), LEVEL_MAP).modules())
    hcal = build_network(cfg_of("model.sync_bn=true", "resources.use_gpu=true", preset="digits-hcal"), LEVEL_MAP)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in hcal.modules())
    with pytest.raises(ValueError, match="model.sync_bn needs GPU workers"):
        cfg_of("model.sync_bn=true")
