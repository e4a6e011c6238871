"""HCALHead: shapes, normalisation, prototype perturbation (Eq. 3-4), readouts, the class-mean init, and
per-level SGD param groups, against loop references and hand-made cases."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hierclr.eval.hierarchical import hierarchical_violation_rate, parent_tables
from hierclr.losses.hcal import hcal_loss
from hierclr.models.hcal import HCALHead
from hierclr.models.heads import MLPHead

# 6 fine classes -> 3 mid classes -> 2 top classes (level 0 finest)
LEVEL_MAP = np.array([[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 0], [4, 2, 1], [5, 2, 1]])
SIZES = (6, 3, 2)


def make_head(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("feat_dim", 5)
    return HCALHead(8, SIZES, **kwargs).double()


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def norms(x):
    return x.norm(dim=-1)


def test_shapes_and_normalisation():
    head = make_head()
    assert head.num_levels == 3 and head.feat_dim == 5
    assert [tuple(p.shape) for p in head.prototypes] == [(6, 5), (3, 5), (2, 5)]
    assert isinstance(head.projection, torch.nn.Linear)
    # random init: unit rows
    for p in head.prototypes:
        torch.testing.assert_close(norms(p), torch.ones(p.shape[0], dtype=torch.float64))
    feats = head(randn(7, 8, seed=1) * 3)
    assert feats.shape == (7, 5)
    torch.testing.assert_close(norms(feats), torch.ones(7, dtype=torch.float64))
    for mode in (True, False):
        head.train(mode)
        for l, c in enumerate(SIZES):
            protos = head.level_prototypes(l)
            assert protos.shape == (c, 5)
            torch.testing.assert_close(norms(protos), torch.ones(c, dtype=torch.float64))
    assert head.prototype_parameters(2) is head.prototypes[2]
    assert len(head.projection_parameters()) == 2
    mlp = make_head(hidden_dim=16)
    assert isinstance(mlp.projection, MLPHead) and len(mlp.projection_parameters()) == 4
    assert mlp(randn(3, 8, seed=2)).shape == (3, 5)
    with pytest.raises(ValueError, match="level must be in 0..2"):
        head.level_prototypes(3)
    with pytest.raises(ValueError, match="num_classes"):
        HCALHead(8, [])
    with pytest.raises(ValueError, match="perturbation"):
        HCALHead(8, SIZES, perturbation=-0.1)


def test_perturbation_only_in_training_and_drawn_from_the_generator():
    head = make_head(perturbation=0.05)
    head.eval()
    clean = F.normalize(head.prototypes[1], dim=1)
    torch.testing.assert_close(head.level_prototypes(1), clean, rtol=0, atol=0)
    torch.testing.assert_close(head.level_prototypes(1), head.level_prototypes(1), rtol=0, atol=0)
    head.train()
    a, b = head.level_prototypes(1), head.level_prototypes(1)
    assert not torch.equal(a, b) and not torch.equal(a, clean)
    # noise N(0, eps^2) added to the raw rows before the normalisation
    got = head.level_prototypes(1, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(got, F.normalize(head.prototypes[1] + 0.05 * noise, dim=1))
    off = make_head(perturbation=0.0).train()
    torch.testing.assert_close(off.level_prototypes(0), F.normalize(off.prototypes[0], dim=1), rtol=0, atol=0)


def test_perturbation_has_the_right_scale():
    # raw rows e_1 (unit); after (e_1 + eps z) / |.|, coordinate j / coordinate 0 = eps z_j / (1 + eps z_0),
    # whose std is eps * sqrt(E[(1 + eps z_0)^-2]) ~= eps * sqrt(1 + 3 eps^2)
    eps, n, d = 0.05, 4000, 64
    torch.manual_seed(0)
    head = HCALHead(4, [n], feat_dim=d, perturbation=eps).train()
    with torch.no_grad():
        head.prototypes[0].zero_()
        head.prototypes[0][:, 0] = 1.0
    out = head.level_prototypes(0, generator=torch.Generator().manual_seed(1)).double()
    ratio = out[:, 1:] / out[:, :1]
    assert ratio.std().item() == pytest.approx(eps * math.sqrt(1 + 3 * eps**2), rel=0.02)
    assert ratio.mean().abs().item() < 0.002


def loop_argmax(feats, protos):
    out = []
    for f in feats.tolist():
        sims = [sum(a * b for a, b in zip(f, p)) / math.sqrt(sum(b * b for b in p)) for p in protos.tolist()]
        out.append(max(range(len(sims)), key=sims.__getitem__))
    return out


def test_predict_independent_and_bottom_up():
    head = make_head(seed=4)
    feats = F.normalize(randn(300, 5, seed=5), dim=1)
    parents = [torch.as_tensor(p) for p in parent_tables(LEVEL_MAP)]
    head.train()  # predictions never see the perturbation
    ind = head.predict(feats)
    assert ind.shape == (300, 3) and ind.dtype == torch.long
    for l in range(3):
        assert ind[:, l].tolist() == loop_argmax(feats, head.prototypes[l])
    torch.testing.assert_close(head.predict(feats), ind, rtol=0, atol=0)
    up = head.predict(feats, readout="bottom_up", parents=parents)
    torch.testing.assert_close(up[:, 0], ind[:, 0], rtol=0, atol=0)
    for i in range(300):  # level l + 1 is the parent of the level-l prediction
        assert up[i, 1].item() == LEVEL_MAP[up[i, 0].item(), 1]
        assert up[i, 2].item() == LEVEL_MAP[up[i, 0].item(), 2]
    tables = parent_tables(LEVEL_MAP)
    assert hierarchical_violation_rate(up.numpy(), tables)[0] == 0.0
    assert hierarchical_violation_rate(ind.numpy(), tables)[0] > 0.0  # random prototypes disagree somewhere
    np_parents = head.predict(feats, readout="bottom_up", parents=tables)
    torch.testing.assert_close(np_parents, up, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs 2 parent tables"):
        head.predict(feats, readout="bottom_up")
    with pytest.raises(ValueError, match="readout"):
        head.predict(feats, readout="top_down")
    with pytest.raises(ValueError, match="has no parent"):
        head.predict(feats, readout="bottom_up", parents=[parents[0][:2], parents[1]])


def ref_init(protos, class_means, level_map):
    """Loop reference of init_prototypes: lists of rows, NaN rows = no data."""
    def normalize(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    protos = [[list(r) for r in p] for p in protos]
    informed = []
    for c, row in enumerate(class_means):
        if all(math.isfinite(x) for x in row):
            protos[0][c] = normalize(row)
            informed.append(c)
    for level in range(len(protos) - 1):
        up_informed = []
        for j in range(len(protos[level + 1])):
            kids = sorted({int(r[level]) for r in level_map if r[level + 1] == j and int(r[level]) in informed})
            if kids:
                rows = [normalize(protos[level][c]) for c in kids]
                protos[level + 1][j] = normalize([sum(r[k] for r in rows) / len(rows) for k in range(len(rows[0]))])
                up_informed.append(j)
        informed = up_informed
    return protos


@pytest.mark.parametrize("missing", [(), (3,), (4, 5)])
def test_init_prototypes_matches_loops(missing):
    head = make_head(seed=6)
    before = [p.detach().clone() for p in head.prototypes]
    means = randn(6, 5, seed=7) * 2
    for c in missing:
        means[c] = float("nan")
    head.init_prototypes(means, LEVEL_MAP)
    want = ref_init([p.tolist() for p in before], means.tolist(), LEVEL_MAP.tolist())
    for got, exp in zip(head.prototypes, want):
        torch.testing.assert_close(got.detach(), torch.tensor(exp, dtype=torch.float64))
    if not missing:  # every parent is the normalised mean of its children
        for level in range(2):
            for j in range(SIZES[level + 1]):
                kids = sorted({int(r[level]) for r in LEVEL_MAP if r[level + 1] == j})
                mean = head.prototypes[level][kids].mean(0)
                torch.testing.assert_close(head.prototypes[level + 1][j], mean / mean.norm())
    if missing == (4, 5):  # mid class 2 and top class 1 have no informed child: random init kept
        torch.testing.assert_close(head.prototypes[1][2], before[1][2])
        torch.testing.assert_close(head.prototypes[2][1], before[2][1])
    for c in missing:
        torch.testing.assert_close(head.prototypes[0][c], before[0][c])


def test_init_prototypes_rejects_bad_inputs():
    head = make_head()
    means = randn(6, 5, seed=8)
    bad = LEVEL_MAP.copy()
    bad[3, 2] = 1
    with pytest.raises(ValueError, match="not a tree"):
        head.init_prototypes(means, bad)
    with pytest.raises(ValueError, match=r"must be a \(6, 3\) integer array"):
        head.init_prototypes(means, LEVEL_MAP[:, :2])
    with pytest.raises(ValueError, match="row 2 is zero"):
        zero = means.clone()
        zero[2] = 0
        head.init_prototypes(zero, torch.as_tensor(LEVEL_MAP))
    with pytest.raises(ValueError, match="class_means must be"):
        head.init_prototypes(means[:5], LEVEL_MAP)
    over = LEVEL_MAP.copy()
    over[5, 1] = 3
    with pytest.raises(ValueError, match="level 1 has 3 classes"):
        head.init_prototypes(means, over)


def labels_of(fine):
    return torch.as_tensor(LEVEL_MAP[fine])


def test_gradients_reach_every_level_and_per_level_sgd_steps_are_lr_times_grad():
    head = make_head(seed=9).train()
    lrs = [0.05 * 2**l for l in range(3)]
    groups = [{"params": head.projection_parameters(), "lr": 0.01}]
    groups += [{"params": [head.prototype_parameters(l)], "lr": lrs[l]} for l in range(3)]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.0, weight_decay=0.0)
    x = randn(12, 8, seed=10)
    labels = labels_of([0, 0, 1, 2, 3, 3, 3, 4, 5, 5, 1, 4])
    feats = head(x)
    loss = hcal_loss(feats, labels, [head.level_prototypes(l) for l in range(3)])
    opt.zero_grad()
    loss.backward()
    for l in range(3):
        assert head.prototypes[l].grad is not None and head.prototypes[l].grad.abs().sum() > 0
    for p in head.projection_parameters():
        assert p.grad.abs().sum() > 0
    assert sum(len(g["params"]) for g in groups) == len(list(head.parameters()))  # every parameter in a group
    before = {id(p): p.detach().clone() for p in head.parameters()}
    grads = {id(p): p.grad.clone() for p in head.parameters()}
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    opt.step()
    for p in head.parameters():
        step = p.detach() - before[id(p)]
        torch.testing.assert_close(step, -lr_of[id(p)] * grads[id(p)], rtol=1e-12, atol=1e-15)
    # the prototype steps follow the 2x-per-level schedule: 0.05, 0.1, 0.2
    for l in range(3):
        p = head.prototypes[l]
        torch.testing.assert_close(p.detach() - before[id(p)], -lrs[l] * grads[id(p)], rtol=1e-12, atol=1e-15)


def test_zero_and_equal_inputs_give_no_nan():
    head = make_head(seed=11).train()
    with torch.no_grad():
        head.projection.bias.zero_()
    feats = head(torch.zeros(6, 8, dtype=torch.float64))
    assert not feats.any()  # F.normalize of a zero row is zero, not NaN
    loss = hcal_loss(feats, labels_of([0, 1, 2, 3, 4, 5]), [head.level_prototypes(l) for l in range(3)])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    same = head(torch.ones(6, 8, dtype=torch.float64))
    assert torch.isfinite(hcal_loss(same, labels_of([0, 1, 2, 3, 4, 5]), [head.level_prototypes(l) for l in range(3)]))
    assert head.predict(feats).shape == (6, 3)
