"""Keep probabilities (Eq. 4, Eq. 7), Bernoulli masks, masked logits."""
import pytest
import torch
import torch.nn.functional as F
from references import hcsc_reference as ref

from hierclr.losses import apply_negative_mask, bernoulli_mask, instance_keep_prob, prototype_keep_prob


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_instance_keep_prob_matches_loops():
    queue, C = unit(9, 5, seed=1), unit(4, 5, seed=2)
    phi = torch.tensor([0.2, 0.05, 1e-5, 0.3], dtype=torch.float64)  # 1e-5 hits the 1e-3 floor
    assign = torch.tensor([0, 2, 2, 3, 1])  # repeated assignment: ties in the rows
    got = instance_keep_prob(queue, C, phi, assign)
    want = ref.instance_keep_prob(queue.tolist(), C.tolist(), phi.tolist(), assign.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert got.shape == (5, 9)
    torch.testing.assert_close(got[1], got[2])


def test_instance_keep_prob_hand_example():
    # one queue key equal to prototype 0, orthogonal to prototype 1, phi = 0.5 for both:
    # P(0) = e^2 / (e^2 + e^0); a query assigned to 0 keeps it with 1 - P(0), one assigned to 1 with P(0)
    queue = torch.tensor([[1.0, 0.0]])
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p0 = torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1)
    got = instance_keep_prob(queue, C, torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
    torch.testing.assert_close(got, torch.stack([1 - p0, p0])[:, None])


def test_prototype_keep_prob_matches_loops():
    C0, C1 = unit(7, 4, seed=3), unit(3, 4, seed=4)
    phi1 = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    parents = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pos, neg_ids = torch.tensor([0, 4, 4, 6]), torch.tensor([1, 2, 3, 5])
    got = prototype_keep_prob(C0, C1, phi1, parents, pos, neg_ids)
    want = ref.prototype_keep_prob(C0.tolist(), C1.tolist(), phi1.tolist(), parents.tolist(), pos.tolist(), neg_ids.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_bernoulli_mask_frequencies_follow_clamped_probabilities():
    p = torch.tensor([0.0, 0.25, 0.5, 1.0]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    m = bernoulli_mask(p, 1e-4, 0.999, generator=g)
    freq = m.mean(0)
    torch.testing.assert_close(freq, torch.tensor([1e-4, 0.25, 0.5, 0.999]), atol=0.01, rtol=0)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    m2 = bernoulli_mask(p, 1e-4, 0.999, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, m2)


def test_apply_negative_mask_modes():
    logits = torch.tensor([[0.5, -0.2, 0.9]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    torch.testing.assert_close(apply_negative_mask(logits, mask, "zero"), torch.tensor([[0.5, 0.0, 0.9]]))
    torch.testing.assert_close(apply_negative_mask(logits, mask, "remove"), torch.tensor([[0.5, float("-inf"), 0.9]]))
    assert apply_negative_mask(logits, None, "zero") is logits
    with pytest.raises(ValueError, match="negative_drop"):
        apply_negative_mask(logits, mask, "drop")
