"""HCAL's loss (bottom-up aggregation Eq. 1-2, per-level InfoNCE Eq. 5-7, adaptive weights Eq. 10-11)
against slow loop references written here, plus hand-made cases with a known answer."""
import math

import pytest
import torch
import torch.nn.functional as F

from hierclr.losses.hcal import adaptive_weights, aggregate_features, hcal_level_losses, hcal_loss

# 6 fine classes -> 3 mid classes -> 2 top classes (level 0 finest)
LEVEL_MAP = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 0], [4, 2, 1], [5, 2, 1]])
SIZES = (6, 3, 2)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit(*shape, seed):
    return F.normalize(randn(*shape, seed=seed), dim=-1)


# ----------------------------------------------------------------------------------------------
# slow references: plain python loops over lists of floats
# ----------------------------------------------------------------------------------------------
def ref_aggregate(feats, child, parent):
    """Row i: mean over the child classes c (present, with parent parent[i]) of the mean of c's rows."""
    d = len(feats[0])
    out = []
    for i in range(len(feats)):
        if parent[i] < 0:
            out.append([0.0] * d)
            continue
        kids = sorted({child[r] for r in range(len(feats)) if parent[r] == parent[i]})
        class_means = []
        for c in kids:
            members = [feats[r] for r in range(len(feats)) if child[r] == c and parent[r] >= 0]
            class_means.append([sum(m[k] for m in members) / len(members) for k in range(d)])
        out.append([sum(m[k] for m in class_means) / len(class_means) for k in range(d)])
    return out


def ref_level_losses(feats0, labels, protos, temperature, aggregate=True, renormalize=True):
    num_levels = len(labels[0])
    feats, out = feats0, []
    for level in range(num_levels):
        if level > 0 and aggregate:
            feats = ref_aggregate(feats, [row[level - 1] for row in labels], [row[level] for row in labels])
        total, n = 0.0, 0
        for i, row in enumerate(labels):
            y = row[level]
            if y < 0:
                continue
            f = feats[i]
            if renormalize:
                norm = math.sqrt(sum(v * v for v in f))
                f = [v / max(norm, 1e-12) for v in f]
            logits = [sum(a * b for a, b in zip(f, p)) / temperature for p in protos[level]]
            top = max(logits)
            lse = top + math.log(sum(math.exp(z - top) for z in logits))
            total += lse - logits[y]
            n += 1
        out.append(total / max(n, 1))
    return out


def batch_labels(fine, unlabelled=()):
    labels = LEVEL_MAP[torch.as_tensor(fine)].clone()
    for r in unlabelled:
        labels[r] = -1
    return labels


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------
CHILD = torch.tensor([0, 0, 0, 1, 2, 3, 3, 5, -1])
PARENT = torch.tensor([0, 0, 0, 0, 1, 7, 7, -1, -1])
# parent 0: children 0 (3 rows) and 1 (1 row); parent 1: one child (2); parent 7: one child (3, 2 rows);
# rows 7, 8: unlabelled at the parent level


def test_aggregate_matches_loops_and_is_a_mean_of_class_means():
    x = randn(9, 4, seed=0)
    out = aggregate_features(x, CHILD, PARENT)
    want = torch.tensor(ref_aggregate(x.tolist(), CHILD.tolist(), PARENT.tolist()), dtype=torch.float64)
    torch.testing.assert_close(out, want)
    # parent 0 by hand: mean of (mean of rows 0-2) and row 3, not the mean of rows 0-3
    by_hand = (x[0:3].mean(0) + x[3]) / 2
    torch.testing.assert_close(out[0], by_hand)
    assert not torch.allclose(out[0], x[0:4].mean(0))
    for r in range(4):
        torch.testing.assert_close(out[r], by_hand)
    torch.testing.assert_close(out[4], x[4])  # a parent with one child present: that child's mean
    torch.testing.assert_close(out[5], x[5:7].mean(0))
    assert not out[7:].any()


def test_aggregate_gradient_reaches_every_contributing_row():
    # d out_i / d x_r = 1 / (k_p * n_c) for every row i with parent p = parent of r's class c
    x = randn(9, 4, seed=1).requires_grad_()
    w = randn(9, 4, seed=2)
    (aggregate_features(x, CHILD, PARENT) * w).sum().backward()
    child, parent = CHILD.tolist(), PARENT.tolist()
    for r in range(9):
        if parent[r] < 0:
            assert not x.grad[r].any()
            continue
        p, c = parent[r], child[r]
        k_p = len({child[i] for i in range(9) if parent[i] == p})
        n_c = sum(1 for i in range(9) if child[i] == c)
        want = sum(w[i] for i in range(9) if parent[i] == p) / (k_p * n_c)
        torch.testing.assert_close(x.grad[r], want)
        assert x.grad[r].abs().sum() > 0


def test_aggregate_with_sparse_large_label_values():
    child = torch.tensor([900, 5, 900, 70000])
    parent = torch.tensor([3000, 3000, 3000, 12])
    x = randn(4, 3, seed=3)
    want = torch.tensor(ref_aggregate(x.tolist(), child.tolist(), parent.tolist()), dtype=torch.float64)
    torch.testing.assert_close(aggregate_features(x, child, parent), want)


def test_aggregate_rejects_non_tree_and_orphan_rows():
    x = randn(3, 2, seed=4)
    with pytest.raises(ValueError, match="child class 4 has two parents in the batch"):
        aggregate_features(x, torch.tensor([4, 4, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="row 1 has parent label 0 but child label -1"):
        aggregate_features(x, torch.tensor([4, -1, 1]), torch.tensor([0, 0, 1]))


# ----------------------------------------------------------------------------------------------
# per-level losses, weights, total
# ----------------------------------------------------------------------------------------------
FINE = [0, 0, 1, 2, 3, 3, 3, 4, 5, 5, 1, 4]


@pytest.mark.parametrize("aggregate", [True, False])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("temperature", [0.1, 0.3])
def test_level_losses_match_loops(aggregate, renormalize, temperature):
    labels = batch_labels(FINE, unlabelled=[2, 9])
    labels[5, 1:] = -1  # labelled at level 0 only
    feats = unit(12, 5, seed=5)
    protos = [unit(c, 5, seed=10 + l) for l, c in enumerate(SIZES)]
    got = hcal_level_losses(feats, labels, protos, temperature=temperature, aggregate=aggregate,
                            renormalize=renormalize)
    want = ref_level_losses(feats.tolist(), labels.tolist(), [p.tolist() for p in protos], temperature,
                            aggregate, renormalize)
    assert len(got) == 3
    for g, w in zip(got, want):
        assert g.item() == pytest.approx(w, rel=1e-10)
    if aggregate:  # the aggregated levels differ from reading feats0 at every level
        plain = hcal_level_losses(feats, labels, protos, temperature=temperature, aggregate=False,
                                  renormalize=renormalize)
        assert got[1].item() != pytest.approx(plain[1].item())
    else:  # level 0 is the same either way
        agg = hcal_level_losses(feats, labels, protos, temperature=temperature, renormalize=renormalize)
        assert got[0].item() == pytest.approx(agg[0].item(), rel=1e-12)


def test_level_loss_by_hand():
    # one sample, one level, two prototypes: loss = log(1 + exp((s_other - s_true) / T))
    f = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    protos = [torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)]
    (loss,) = hcal_level_losses(f, torch.tensor([[1]]), protos, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp((0.6 - 1.0) / 0.5)))


def test_adaptive_weights_are_a_detached_softmax():
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(2.0, requires_grad=True)
    w = adaptive_weights([a, b * 1.0], gamma=0.5)
    assert not w.requires_grad
    e2 = math.exp(2.0)  # softmax([2, 4]) = [1, e^2] / (1 + e^2)
    torch.testing.assert_close(w, torch.tensor([1 / (1 + e2), e2 / (1 + e2)]))
    torch.testing.assert_close(adaptive_weights([a, b], gamma=2.0), torch.softmax(torch.tensor([0.5, 1.0]), 0))
    with pytest.raises(ValueError, match="gamma"):
        adaptive_weights([a], gamma=0.0)


def test_total_gradient_treats_the_weights_as_constants():
    labels = batch_labels(FINE)
    feats = unit(12, 5, seed=6).requires_grad_()
    protos = [unit(c, 5, seed=20 + l).requires_grad_() for l, c in enumerate(SIZES)]
    leaves = [feats, *protos]
    total, parts = hcal_loss(feats, labels, protos, gamma=0.5, return_parts=True)
    grad_total = torch.autograd.grad(total, leaves)
    losses = hcal_level_losses(feats, labels, protos)
    w = adaptive_weights(losses, 0.5)
    want = [torch.zeros_like(t) for t in leaves]
    for l, loss in enumerate(losses):
        for acc, g in zip(want, torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)):
            if g is not None:
                acc += w[l] * g
    for got, exp in zip(grad_total, want):
        torch.testing.assert_close(got, exp)
    # the parts: detached level losses and the weights used
    assert total.item() == pytest.approx(sum(w[l].item() * losses[l].item() for l in range(3)), rel=1e-12)
    for l in range(3):
        assert not parts[f"level{l}"].requires_grad
        assert parts[f"level{l}"].item() == pytest.approx(losses[l].item(), rel=1e-12)
        assert parts[f"weight/level{l}"].item() == pytest.approx(w[l].item(), rel=1e-12)
    assert set(parts) == {"level0", "level1", "level2", "weight/level0", "weight/level1", "weight/level2"}


def test_fixed_weights_give_the_plain_mean():
    labels = batch_labels(FINE)
    feats = unit(12, 5, seed=7)
    protos = [unit(c, 5, seed=30 + l) for l, c in enumerate(SIZES)]
    losses = hcal_level_losses(feats, labels, protos, aggregate=False)
    total, parts = hcal_loss(feats, labels, protos, adaptive=False, aggregate=False, return_parts=True)
    assert total.item() == pytest.approx(sum(x.item() for x in losses) / 3, rel=1e-12)
    assert all(parts[f"weight/level{l}"].item() == pytest.approx(1 / 3) for l in range(3))


@pytest.mark.parametrize("value", [0.0, 0.3])
def test_all_equal_features_give_no_nan(value):
    labels = batch_labels(FINE, unlabelled=[0])
    feats = torch.full((12, 5), value, dtype=torch.float64, requires_grad=True)
    protos = [unit(c, 5, seed=40 + l).requires_grad_() for l, c in enumerate(SIZES)]
    total = hcal_loss(feats, labels, protos)
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(feats.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in protos)
    # identical prototypes as well: every logit equal, loss = log(C_l) per level
    same = [torch.ones(c, 5, dtype=torch.float64) / math.sqrt(5) for c in SIZES]
    losses = hcal_level_losses(feats.detach(), labels, same)
    for loss, c in zip(losses, SIZES):
        assert loss.item() == pytest.approx(math.log(c))


def test_unlabelled_batch_and_half_precision():
    labels = torch.full((4, 3), -1)
    feats = unit(4, 5, seed=8).requires_grad_()
    protos = [unit(c, 5, seed=50 + l) for l, c in enumerate(SIZES)]
    total = hcal_loss(feats, labels, protos)
    assert total.item() == 0.0
    total.backward()  # a graph even with nothing labelled
    losses = hcal_level_losses(feats.detach().bfloat16(), batch_labels([0, 2, 4, 5]), [p.bfloat16() for p in protos])
    assert all(x.dtype == torch.float32 and torch.isfinite(x) for x in losses)


def test_bad_inputs_raise():
    feats = unit(3, 5, seed=9)
    protos = [unit(c, 5, seed=60 + l) for l, c in enumerate(SIZES)]
    with pytest.raises(ValueError, match="label 6 at level 0 is out of range"):
        hcal_level_losses(feats, torch.tensor([[6, 2, 1], [0, 0, 0], [1, 0, 0]]), protos, aggregate=False)
    with pytest.raises(ValueError, match="3 levels but 2 prototype"):
        hcal_level_losses(feats, batch_labels([0, 1, 2]), protos[:2])
    with pytest.raises(ValueError, match="temperature"):
        hcal_level_losses(feats, batch_labels([0, 1, 2]), protos, temperature=0.0)
    with pytest.raises(ValueError, match=r"prototypes\[1\] must be"):
        hcal_level_losses(feats, batch_labels([0, 1, 2]), [protos[0], unit(3, 4, seed=1), protos[2]])


def test_loss_leaves_autocast():
    """Issue 17 item 10: under bf16 autocast (CPU autocast here, the same op lists as CUDA's for matmul) the
    logits stay fp32, so the loss equals the fp32 one (it was ~1e-2 off with bf16 logits)."""
    fine = [0, 1, 2, 3, 4, 5, 0, 2, 4, 1]
    feats = unit(10, 16, seed=3).float()
    protos = [unit(c, 16, seed=60 + l).float() for l, c in enumerate(SIZES)]
    want = hcal_loss(feats, batch_labels(fine), protos, temperature=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hcal_loss(feats, batch_labels(fine), protos, temperature=0.05)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    ref = ref_level_losses(feats.double().tolist(), batch_labels(fine).tolist(), [p.double().tolist() for p in protos],
                           0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        levels = hcal_level_losses(feats, batch_labels(fine), protos, temperature=0.05)
    assert [x.item() for x in levels] == pytest.approx(ref, rel=1e-5)
