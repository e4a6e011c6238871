"""InfoNCE (Eq. 1) against loops, with and without selected negatives."""
import math

import pytest
import torch
import torch.nn.functional as F
from references import hcsc_reference as ref

from hierclr.losses import info_nce


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("drop", ["zero", "remove"])
@pytest.mark.parametrize("T", [0.2, 0.07])
def test_matches_loops(drop, T):
    q, k, queue = unit(6, 8, seed=0), unit(6, 8, seed=1), unit(11, 8, seed=2)
    mask = (torch.rand(6, 11, generator=torch.Generator().manual_seed(3)) > 0.4).double()
    got = info_nce(q, k, queue, T, neg_mask=mask, negative_drop=drop)
    assert got.item() == pytest.approx(ref.info_nce(q.tolist(), k.tolist(), queue.tolist(), T, mask.tolist(), drop), rel=1e-10)
    plain = info_nce(q, k, queue, T)
    assert plain.item() == pytest.approx(ref.info_nce(q.tolist(), k.tolist(), queue.tolist(), T), rel=1e-10)


def test_hand_example():
    # q = k, one orthogonal negative: loss = -log(e^{1/T} / (e^{1/T} + e^0))
    q = torch.tensor([[1.0, 0.0]])
    got = info_nce(q, q, torch.tensor([[0.0, 1.0]]), 0.5)
    assert got.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)), rel=1e-6)


def test_gradient_flows_to_q_only():
    q = unit(4, 3, seed=0).requires_grad_()
    queue = unit(5, 3, seed=1).requires_grad_()
    info_nce(q, unit(4, 3, seed=2), queue).backward()
    assert q.grad is not None and queue.grad is None
