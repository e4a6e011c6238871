"""SupCon (Khosla et al. 2020, L_out) against explicit loops over anchors, positives and the rest."""
import math

import pytest
import torch
import torch.nn.functional as F

from hierclr.losses import label_pairs
from hierclr.losses.clce import lacln_loss
from hierclr.losses.supcon import supcon_loss


def unit(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def ref_supcon(z, labels, T):
    """Slow, obvious L_out: per anchor -(1/|P|) sum_p log(e_ip / sum_{a != i} e_ia), mean over anchors with P."""
    n = z.shape[0]
    lab = labels.tolist()
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and lab[p] == lab[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(z[i] @ z[a] / T) for a in range(n) if a != i)
        terms = [torch.log(torch.exp(z[i] @ z[p] / T) / denominator) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses), n - len(losses)


def value_and_grad(fn, z, *args, **kwargs):
    z = z.detach().clone().requires_grad_()
    out = fn(z, *args, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return out, z.grad


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("T", [0.1, 0.5])
def test_matches_loops_value_and_grad(seed, T):
    z = unit(12, 5, seed)
    labels = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(seed + 10))
    (got, parts), g = value_and_grad(supcon_loss, z, labels, temperature=T, return_parts=True)
    (want, skipped), g_ref = value_and_grad(lambda x: ref_supcon(x, labels, T), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    assert int(parts["anchors_skipped"]) == skipped
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


def test_float32_matches_float64_loops():
    z = unit(16, 8, 3)
    labels = torch.tensor([5, 5, 9, 9, 9, 2, 2, 5, 9, 2, 5, 5, 2, 9, 7, 7])
    got, g = value_and_grad(supcon_loss, z.float(), labels)
    (want, _), g_ref = value_and_grad(lambda x: ref_supcon(x, labels, 0.1), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_class_of_one_sample_is_skipped_and_counted():
    z = unit(7, 4, 4)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # labels 2 and 3 have no positives
    (got, parts), g = value_and_grad(supcon_loss, z, labels, return_parts=True)
    (want, skipped), g_ref = value_and_grad(lambda x: ref_supcon(x, labels, 0.1), z)
    assert skipped == 2 and int(parts["anchors_skipped"]) == 2
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


def test_every_anchor_skipped_gives_connected_zero():
    z = unit(5, 3, 5).requires_grad_()
    loss, parts = supcon_loss(z, torch.arange(5) * 7, return_parts=True)
    assert loss.item() == 0.0 and loss.requires_grad and int(parts["anchors_skipped"]) == 5
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    one = unit(1, 3, 6).requires_grad_()  # a single row: no other row at all
    supcon_loss(one, torch.tensor([4])).backward()
    assert torch.equal(one.grad, torch.zeros_like(one))


def test_one_class_no_negatives():
    z = unit(6, 4, 7)
    labels = torch.full((6,), 3)
    got, g = value_and_grad(supcon_loss, z, labels)
    (want, _), g_ref = value_and_grad(lambda x: ref_supcon(x, labels, 0.1), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


def test_all_equal_embeddings_finite():
    z = F.normalize(torch.ones(8, 4), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    loss, g = value_and_grad(supcon_loss, z, labels, temperature=0.05)
    # every e_ij is the same: each anchor's ratio is 1 / (N - 1)
    assert loss.item() == pytest.approx(math.log(7), rel=1e-6)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_gives_fp32_result(dtype):
    z = unit(16, 8, 8, dtype=torch.float32).to(dtype)
    labels = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    zh = z.clone().requires_grad_()
    got = supcon_loss(zh, labels, temperature=0.05)
    want = supcon_loss(z.float(), labels, temperature=0.05)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    got.backward()
    assert zh.grad.dtype == dtype and torch.isfinite(zh.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = supcon_loss(z.float(), labels, temperature=0.05)
    assert under_amp.dtype == torch.float32 and under_amp.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_lacln_outside_with_beta_one(seed, monkeypatch):
    """SupCon is LACLN's "outside" form with every hard-negative weight forced to 1 (log beta = 0)."""
    z = unit(12, 6, seed)
    labels = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(seed))
    monkeypatch.setattr(label_pairs, "log_hard_negative_weights", lambda s, neg: torch.zeros_like(s))
    lacln, g_lacln = value_and_grad(lacln_loss, z, labels, temperature=0.2, form="outside")
    sup, g_sup = value_and_grad(supcon_loss, z, labels, temperature=0.2)
    assert sup.item() == pytest.approx(lacln.item(), abs=1e-12)
    torch.testing.assert_close(g_sup, g_lacln, atol=1e-12, rtol=1e-10)


def test_rejects_bad_inputs():
    z = unit(4, 3, 0)
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(z, torch.zeros(4, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(z, torch.zeros(4))
