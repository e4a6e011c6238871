"""ICSC (Eq. 4-6) and PCSC (Eq. 7-9) against loop references, with given and drawn masks."""
import pytest
import torch
import torch.nn.functional as F
from references import hcsc_reference as ref

from hierclr.clustering import Prototypes, compose_assignments
from hierclr.losses import icsc_loss, instance_keep_prob, pcsc_loss, prototype_keep_prob


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def make_protos(n=40, sizes=(8, 4, 2), d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    cents = [unit(m, d, seed=seed + i) for i, m in enumerate(sizes)]
    parents = [torch.arange(sizes[i]) % sizes[i + 1] for i in range(len(sizes) - 1)]
    phi = [0.05 + torch.rand(m, generator=g, dtype=torch.float64) * 0.3 for m in sizes]
    a0 = torch.randint(0, sizes[0], (n,), generator=g)
    return Prototypes(cents, parents, phi, compose_assignments(a0, parents))


def rand_mask(*shape, seed):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.35).double()


@pytest.mark.parametrize("drop", ["zero", "remove"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_icsc_with_given_masks_matches_loops(drop, reduction):
    P = make_protos()
    q, k, queue = unit(5, 6, seed=10), unit(5, 6, seed=11), unit(13, 6, seed=12)
    ids = torch.tensor([0, 3, 3, 17, 39])
    masks = [rand_mask(5, 13, seed=20 + l) for l in range(3)]
    loss, info = icsc_loss(q, k, queue, P, ids, negative_drop=drop, level_reduction=reduction, masks=masks)
    per_level = [ref.info_nce(q.tolist(), k.tolist(), queue.tolist(), 0.2, m.tolist(), drop) for m in masks]
    want = sum(per_level) if reduction == "sum" else sum(per_level) / 3
    assert loss.item() == pytest.approx(want, rel=1e-10)
    torch.testing.assert_close(info["level_losses"], torch.tensor(per_level, dtype=torch.float64))
    torch.testing.assert_close(info["kept_fraction"], torch.stack([m.mean() for m in masks]))


def test_icsc_draws_masks_from_eq4():
    P = make_protos()
    q, k, queue = unit(4, 6, seed=1), unit(4, 6, seed=2), unit(7, 6, seed=3)
    ids = torch.tensor([1, 2, 3, 4])
    g = torch.Generator().manual_seed(0)
    _, info = icsc_loss(q, k, queue, P, ids, generator=g)
    g = torch.Generator().manual_seed(0)
    for level, mask in enumerate(info["masks"]):
        keep = instance_keep_prob(queue, P.centroids[level], P.phi[level], P.assignments[ids, level])
        assert torch.equal(mask, torch.bernoulli(keep.clamp(0.0, 0.999), generator=g))
    # with all-ones masks ICSC is L plain InfoNCE terms
    ones = [torch.ones(4, 7, dtype=torch.float64)] * 3
    loss, _ = icsc_loss(q, k, queue, P, ids, masks=ones)
    assert loss.item() == pytest.approx(3 * ref.info_nce(q.tolist(), k.tolist(), queue.tolist(), 0.2), rel=1e-10)


@pytest.mark.parametrize("drop", ["zero", "remove"])
def test_pcsc_with_given_masks_matches_loops(drop):
    P = make_protos()
    q = unit(6, 6, seed=5).requires_grad_()
    ids = torch.tensor([0, 1, 2, 2, 9, 30])
    masks = [rand_mask(6, m, seed=40 + l) for l, m in enumerate(P.sizes)]
    loss, _info = pcsc_loss(q, P, ids, negative_drop=drop, masks=masks)
    per_level = [
        ref.proto_nce_level(q.tolist(), P.centroids[l].tolist(), P.phi[l].tolist(), P.assignments[ids, l].tolist(), masks[l].tolist(), drop)
        for l in range(3)
    ]
    assert loss.item() == pytest.approx(sum(per_level) / 3, rel=1e-10)
    loss.backward()
    assert torch.isfinite(q.grad).all()


def test_pcsc_candidates_include_the_highest_prototype_id():
    # the reference code's range(max assignment) dropped the highest id; here it is a candidate
    P = make_protos(sizes=(5,), n=10)
    q = unit(2, 6, seed=1)
    ids = torch.tensor([i for i in range(10) if P.assignments[i, 0] < 4][:2])
    loss, _ = pcsc_loss(q, P, ids)
    want = ref.proto_nce_level(q.tolist(), P.centroids[0].tolist(), P.phi[0].tolist(), P.assignments[ids, 0].tolist())
    assert loss.item() == pytest.approx(want, rel=1e-10)


def test_pcsc_drawn_masks_follow_eq7_and_top_level_is_unselected():
    P = make_protos()
    q = unit(5, 6, seed=6)
    ids = torch.tensor([3, 5, 7, 11, 13])
    g = torch.Generator().manual_seed(1)
    _, info = pcsc_loss(q, P, ids, generator=g)
    g = torch.Generator().manual_seed(1)
    for level in range(2):
        keep = prototype_keep_prob(
            P.centroids[level], P.centroids[level + 1], P.phi[level + 1], P.parents[level],
            P.assignments[ids, level], torch.arange(P.sizes[level]),
        )
        assert torch.equal(info["masks"][level], torch.bernoulli(keep.clamp(1e-4, 0.999), generator=g))
    assert info["masks"][2] is None and info["kept_fraction"][2].item() == 1.0
    # selection off equals unmasked ProtoNCE at every level
    off, _ = pcsc_loss(q, P, ids, selection=False)
    want = sum(
        ref.proto_nce_level(q.tolist(), P.centroids[l].tolist(), P.phi[l].tolist(), P.assignments[ids, l].tolist())
        for l in range(3)
    ) / 3
    assert off.item() == pytest.approx(want, rel=1e-10)


def test_pcsc_when_every_prototype_is_a_positive():
    # 3 prototypes, the batch covers all of them: no candidate negative is left, only the positive
    C = [unit(3, 6, seed=0)]
    P = Prototypes(C, [], [torch.full((3,), 0.2, dtype=torch.float64)], torch.tensor([[0], [1], [2], [0]]))
    loss, _info = pcsc_loss(unit(4, 6, seed=1), P, torch.arange(4))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_mask_count_mismatch_is_an_error():
    P = make_protos()
    with pytest.raises(ValueError, match="2 masks given for 3"):
        pcsc_loss(unit(2, 6, seed=0), P, torch.tensor([0, 1]), masks=[None, None])
