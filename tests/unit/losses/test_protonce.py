"""PCL's ProtoNCE (``method: pcl``) against a loop reference written from PCL's code; HCSC keeps its own rule."""
import pytest
import torch
import torch.nn.functional as F
from references import pcl_reference as pcl

from hierclr.clustering import Prototypes, compose_assignments
from hierclr.losses import pcsc_loss, proto_nce_loss


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def make_protos(n=40, sizes=(9, 4), d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    cents = [unit(m, d, seed=seed + i) for i, m in enumerate(sizes)]
    parents = [torch.arange(sizes[i]) % sizes[i + 1] for i in range(len(sizes) - 1)]
    phi = [0.05 + torch.rand(m, generator=g, dtype=torch.float64) * 0.3 for m in sizes]
    a0 = torch.arange(n) % sizes[0]  # every prototype used, so im2cluster.max() + 1 == K as in PCL
    return Prototypes(cents, parents, phi, compose_assignments(a0, parents))


def reference(q, P, ids, negatives):
    return sum(
        pcl.proto_nce_level(q.tolist(), P.centroids[l].tolist(), P.phi[l].tolist(), P.assignments[:, l].tolist(),
                            ids.tolist(), negatives[l])
        for l in range(P.num_levels)
    ) / P.num_levels


def test_every_negative_matches_pcl_code():
    P = make_protos()
    q = unit(6, 6, seed=8)
    ids = torch.tensor([0, 9, 1, 12, 5, 21])  # ids 0 and 9 share level-0 prototype 0; 1 and 21 share level 1
    got, info = proto_nce_loss(q, P, ids)
    negs = [pcl.negatives_of(P.assignments[:, l].tolist(), ids.tolist()) for l in range(2)]
    assert got.item() == pytest.approx(reference(q, P, ids, negs), rel=1e-12)
    assert [c.nonzero().flatten().tolist() for c in info["candidates"]] == negs


def test_sampled_negatives_match_pcl_code():
    P = make_protos()
    q, ids = unit(4, 6, seed=3), torch.tensor([2, 3, 11, 30])
    got, info = proto_nce_loss(q, P, ids, num_negatives=2, generator=torch.Generator().manual_seed(0))
    chosen = [c.nonzero().flatten().tolist() for c in info["candidates"]]
    for l, neg in enumerate(chosen):
        assert len(neg) == 2 and set(neg) <= set(pcl.negatives_of(P.assignments[:, l].tolist(), ids.tolist()))
    assert got.item() == pytest.approx(reference(q, P, ids, chosen), rel=1e-12)


def test_gradient_matches_pcl_code():
    P = make_protos()
    ids = torch.tensor([0, 9, 4])
    q = unit(3, 6, seed=5).requires_grad_()
    proto_nce_loss(q, P, ids)[0].backward()
    negs = [pcl.negatives_of(P.assignments[:, l].tolist(), ids.tolist()) for l in range(2)]
    eps, base = 1e-6, q.detach()
    for i in range(3):
        for d in range(6):
            hi, lo = base.clone(), base.clone()
            hi[i, d] += eps
            lo[i, d] -= eps
            fd = (reference(hi, P, ids, negs) - reference(lo, P, ids, negs)) / (2 * eps)
            assert q.grad[i, d].item() == pytest.approx(fd, abs=1e-7)


def test_pcl_rule_differs_from_hcsc_rule():
    """Issue 17 item 4: other samples' positives are PCL negatives; HCSC (PCSC without selection) excludes them.
    PCL's softmax has a superset of HCSC's columns, so its loss is larger per sample."""
    P = make_protos(n=400, sizes=(40, 8), d=16)
    ids = torch.randperm(400, generator=torch.Generator().manual_seed(1))[:32]
    q = unit(32, 16, seed=2)
    pcl_loss, _ = proto_nce_loss(q, P, ids)
    hcsc_loss, _ = pcsc_loss(q, P, ids, selection=False)
    assert pcl_loss.item() > hcsc_loss.item() + 0.1
    # one sample: no other positive, the two rules agree
    one = ids[:1]
    assert proto_nce_loss(q[:1], P, one)[0].item() == pytest.approx(pcsc_loss(q[:1], P, one, selection=False)[0].item(),
                                                                    rel=1e-12)
