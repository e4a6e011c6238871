"""CLCE (Eq. 1-3): LACLN in both forms and the CE mix against explicit loops over anchors,
positives and negatives (float64, autograd through the loops for the gradients)."""
import math

import pytest
import torch
import torch.nn.functional as F

from hierclr.losses.clce import clce_loss, hard_negative_weights, lacln_loss


def unit(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def ref_sets(labels, i):
    lab = labels.tolist()
    positives = [p for p in range(len(lab)) if p != i and lab[p] == lab[i]]
    negatives = [k for k in range(len(lab)) if lab[k] != lab[i]]
    return positives, negatives


def ref_beta(z, labels, T, i, detach=False):
    """Eq. 3's weights of anchor i: {k: |N_i| e_ik / sum_{k'} e_ik'} over its negatives."""
    _, negatives = ref_sets(labels, i)
    e = {k: torch.exp(z[i] @ z[k] / T) for k in negatives}
    total = sum(e.values())
    beta = {k: len(negatives) * e[k] / total for k in negatives}
    return {k: b.detach() for k, b in beta.items()} if detach else beta


def ref_lacln(z, labels, T, form, detach_beta=False):
    """Slow, obvious Eq. 3 per anchor, mean over anchors with positives; returns (loss, skipped)."""
    losses = []
    for i in range(z.shape[0]):
        positives, negatives = ref_sets(labels, i)
        if not positives:
            continue
        beta = ref_beta(z, labels, T, i, detach=detach_beta)
        e_pos = [torch.exp(z[i] @ z[p] / T) for p in positives]
        denominator = sum(e_pos) + sum(beta[k] * torch.exp(z[i] @ z[k] / T) for k in negatives)
        if form == "inside":
            losses.append(-torch.log(sum(e_pos) / len(positives) / denominator))
        else:
            losses.append(-sum(torch.log(e / denominator) for e in e_pos) / len(positives))
    return sum(losses) / len(losses), z.shape[0] - len(losses)


def ref_ce(logits, labels):
    rows = []
    for i in range(logits.shape[0]):
        row = logits[i]
        rows.append(-torch.log(torch.exp(row[labels[i]]) / sum(torch.exp(v) for v in row)))
    return sum(rows) / len(rows)


def value_and_grad(fn, z, *args, **kwargs):
    z = z.detach().clone().requires_grad_()
    out = fn(z, *args, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return out, z.grad


def random_labels(n, classes, seed):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed + 100))


@pytest.mark.parametrize("form", ["inside", "outside"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("T", [0.5, 0.1])
def test_lacln_matches_loops_value_and_grad(form, seed, T):
    z, labels = unit(12, 5, seed), random_labels(12, 3, seed)
    (got, parts), g = value_and_grad(lacln_loss, z, labels, temperature=T, form=form, return_parts=True)
    (want, skipped), g_ref = value_and_grad(lambda x: ref_lacln(x, labels, T, form), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    assert int(parts["anchors_skipped"]) == skipped
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


def test_forms_differ():
    z, labels = unit(12, 5, 3), random_labels(12, 3, 3)
    assert lacln_loss(z, labels, form="inside").item() != pytest.approx(lacln_loss(z, labels, form="outside").item())


@pytest.mark.parametrize("form", ["inside", "outside"])
def test_float32_matches_float64_loops(form):
    z = unit(16, 8, 4)
    labels = torch.tensor([11, 11, 4, 4, 4, 0, 0, 11, 4, 0, 11, 11, 0, 4, 8, 8])
    got, g = value_and_grad(lacln_loss, z.float(), labels, form=form)
    (want, _), g_ref = value_and_grad(lambda x: ref_lacln(x, labels, 0.5, form), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("form", ["inside", "outside"])
def test_beta_is_not_detached(form):
    """The gradient is the reference's with beta a function of z, and not the one with beta detached."""
    z, labels = unit(10, 4, 5), random_labels(10, 3, 5)
    _, g = value_and_grad(lacln_loss, z, labels, form=form)
    (_, _), g_ref = value_and_grad(lambda x: ref_lacln(x, labels, 0.5, form), z)
    (_, _), g_detached = value_and_grad(lambda x: ref_lacln(x, labels, 0.5, form, detach_beta=True), z)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)
    assert (g - g_detached).abs().max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_hard_negative_weights_match_loops_and_have_mean_one(seed):
    z, labels = unit(11, 4, seed), random_labels(11, 3, seed)
    beta = hard_negative_weights(z, labels, temperature=0.5)
    for i in range(11):
        want = ref_beta(z, labels, 0.5, i)
        _, negatives = ref_sets(labels, i)
        for k in range(11):
            expected = want[k].item() if k in want else 0.0
            assert beta[i, k].item() == pytest.approx(expected, abs=1e-12)
        if negatives:
            assert beta[i, negatives].mean().item() == pytest.approx(1.0, abs=1e-12)
            assert sum(want.values()).item() / len(negatives) == pytest.approx(1.0, abs=1e-12)
    # harder negatives (more similar to the anchor) get larger weights
    i = 0
    _, negatives = ref_sets(labels, i)
    sims = z[i] @ z[negatives].T
    assert torch.equal(torch.argsort(sims), torch.argsort(beta[i, negatives]))


@pytest.mark.parametrize("form", ["inside", "outside"])
def test_class_of_one_sample_is_skipped_and_counted(form):
    z = unit(7, 4, 6)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    (got, parts), g = value_and_grad(lacln_loss, z, labels, form=form, return_parts=True)
    (want, skipped), g_ref = value_and_grad(lambda x: ref_lacln(x, labels, 0.5, form), z)
    assert skipped == 2 and int(parts["anchors_skipped"]) == 2
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("form", ["inside", "outside"])
def test_every_anchor_skipped_gives_connected_zero(form):
    z = unit(5, 3, 7).requires_grad_()
    loss, parts = lacln_loss(z, torch.tensor([3, 1, 4, 15, 9]), form=form, return_parts=True)
    assert loss.item() == 0.0 and loss.requires_grad and int(parts["anchors_skipped"]) == 5
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("form", ["inside", "outside"])
def test_one_class_has_empty_beta_term(form):
    z, labels = unit(6, 4, 8), torch.full((6,), 2)
    (got, parts), g = value_and_grad(lacln_loss, z, labels, form=form, return_parts=True)
    (want, _), g_ref = value_and_grad(lambda x: ref_lacln(x, labels, 0.5, form), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-10) and int(parts["anchors_skipped"]) == 0
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)
    if form == "inside":  # -log((1/|P|) S_P / S_P) = log|P| for every anchor
        assert got.item() == pytest.approx(math.log(5), abs=1e-12)
    assert torch.isfinite(hard_negative_weights(z, labels)).all()


@pytest.mark.parametrize("form", ["inside", "outside"])
def test_all_equal_embeddings_finite(form):
    z = F.normalize(torch.ones(8, 4), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    loss, g = value_and_grad(lacln_loss, z, labels, temperature=0.05, form=form)
    # every e_ij equal, beta = 1: D_i = (N - 1) e, and both forms give log(N - 1)
    assert loss.item() == pytest.approx(math.log(7), rel=1e-6)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("form", ["inside", "outside"])
def test_small_temperature_stays_finite_and_exact(form):
    """At tau = 0.01 the squared exponentials reach exp(200), past fp32's range: log space keeps it exact."""
    z, labels = unit(10, 3, 9), random_labels(10, 2, 9)
    got, g = value_and_grad(lacln_loss, z.float(), labels, temperature=0.01, form=form)
    (want, _), g_ref = value_and_grad(lambda x: ref_lacln(x, labels, 0.01, form), z)
    assert torch.isfinite(got) and torch.isfinite(g).all()
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-4)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", ["inside", "outside"])
def test_half_input_gives_fp32_result(dtype, form):
    z = unit(16, 8, 10, dtype=torch.float32).to(dtype)
    labels = random_labels(16, 4, 10)
    zh = z.clone().requires_grad_()
    got = lacln_loss(zh, labels, temperature=0.05, form=form)
    want = lacln_loss(z.float(), labels, temperature=0.05, form=form)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), abs=1e-6)
    got.backward()
    assert zh.grad.dtype == dtype and torch.isfinite(zh.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = lacln_loss(z.float(), labels, temperature=0.05, form=form)
    assert under_amp.dtype == torch.float32 and under_amp.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("form", ["inside", "outside"])
@pytest.mark.parametrize("lam", [0.9, 0.3])
def test_clce_is_weighted_ce_plus_lacln(form, lam):
    z, labels = unit(12, 5, 11), random_labels(12, 4, 11)
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    logits.requires_grad_()
    zg = z.clone().requires_grad_()
    loss, parts = clce_loss(logits, zg, labels, lam=lam, form=form, return_parts=True)
    ce = ref_ce(logits.detach(), labels)
    lacln, skipped = ref_lacln(z, labels, 0.5, form)
    assert parts["ce"].item() == pytest.approx(ce.item(), abs=1e-10)
    assert parts["lacln"].item() == pytest.approx(lacln.item(), abs=1e-10)
    assert int(parts["anchors_skipped"]) == skipped
    assert loss.item() == pytest.approx((1 - lam) * ce.item() + lam * lacln.item(), abs=1e-10)
    assert not parts["ce"].requires_grad and not parts["lacln"].requires_grad
    loss.backward()
    logits_ref = logits.detach().clone().requires_grad_()
    z_ref = z.clone().requires_grad_()
    ((1 - lam) * ref_ce(logits_ref, labels) + lam * ref_lacln(z_ref, labels, 0.5, form)[0]).backward()
    torch.testing.assert_close(logits.grad, logits_ref.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(zg.grad, z_ref.grad, atol=1e-10, rtol=1e-8)


def test_rejects_bad_arguments():
    z, labels = unit(4, 3, 0), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="form"):
        lacln_loss(z, labels, form="middle")
    with pytest.raises(ValueError, match="temperature"):
        lacln_loss(z, labels, temperature=-1.0)
    with pytest.raises(ValueError, match="lam"):
        clce_loss(torch.zeros(4, 2), z, labels, lam=1.5)
    with pytest.raises(ValueError, match="logits"):
        clce_loss(torch.zeros(3, 2), z, labels)
