"""Multi-crop through MoCo.forward (local queries inside the forward, so DDP reduces their gradients), the
real training step under a single-process DDP wrapper, and the E-step / kNN feature pass ``embed_pass``."""
from __future__ import annotations

import copy
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from hierclr.clustering.prototypes import Prototypes, compose_assignments
from hierclr.config.pretrain import HCSCLossConfig
from hierclr.losses import HCSCObjective
from hierclr.methods.contrastive_step import embed_pass, hcsc_train_step
from hierclr.models import MoCo

DIM = 32
QUEUE = 64
N_IDS = 16


def small_moco(seed: int = 0) -> MoCo:
    torch.manual_seed(seed)
    return MoCo("resnet10", dim=DIM, hidden_dim=64, queue_size=QUEUE, cifar_stem=True, momentum=0.9)


def views(seed: int, batch: int = 4, local_sizes=(8, 12)):
    g = torch.Generator().manual_seed(seed)
    im_q = torch.randn(batch, 3, 16, 16, generator=g)
    im_k = torch.randn(batch, 3, 16, 16, generator=g)
    local = [torch.randn(batch, 3, s, s, generator=g) for s in local_sizes]
    return im_q, im_k, local


def prototypes(seed: int = 0) -> Prototypes:
    g = torch.Generator().manual_seed(seed)
    c0 = F.normalize(torch.randn(4, DIM, generator=g), dim=1)
    c1 = F.normalize(torch.randn(2, DIM, generator=g), dim=1)
    parents = (torch.tensor([0, 0, 1, 1]),)
    phi = (torch.full((4,), 0.2), torch.full((2,), 0.25))
    level0 = torch.arange(N_IDS) % 4
    return Prototypes(centroids=(c0, c1), parents=parents, phi=phi, assignments=compose_assignments(level0, parents))


def _unit_rows(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=1), torch.ones(x.shape[0]), atol=1e-5)


# ---------------------------------------------------------------------------------------- forward
def test_forward_with_local_views_returns_local_queries():
    model = small_moco()
    im_q, im_k, local = views(0)
    out = model(im_q, im_k, local)
    assert len(out) == 3
    q, k, local_q = out
    assert q.shape == k.shape == (4, DIM)
    assert isinstance(local_q, list) and [v.shape for v in local_q] == [(4, DIM), (4, DIM)]
    assert _unit_rows(q) and _unit_rows(k) and all(_unit_rows(v) for v in local_q)
    assert q.requires_grad and not k.requires_grad and all(v.requires_grad for v in local_q)
    # train-mode BN uses batch statistics, so the same view through forward_query gives the same query
    for view, lq in zip(local, local_q):
        assert torch.allclose(model.forward_query(view), lq, atol=1e-6)
    # without local views the two-tuple of plain MoCo
    assert len(model(im_q, im_k)) == 2
    assert len(model(im_q, im_k, [])) == 2


def test_forward_runs_one_momentum_update_with_local_views():
    model = small_moco()
    ref = copy.deepcopy(model)
    with torch.no_grad():  # make the update visible: move the query encoder away from the key encoder
        for p in model.encoder_q.parameters():
            p.add_(0.01)
        for p in ref.encoder_q.parameters():
            p.add_(0.01)
    im_q, im_k, local = views(1)
    model(im_q, im_k, local)
    ref.momentum_update()  # exactly one update per forward, however many local views
    for a, b in zip(model.encoder_k.parameters(), ref.encoder_k.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_gradient_from_a_local_query_reaches_encoder_q():
    model = small_moco()
    im_q, im_k, local = views(2)
    _, _, local_q = model(im_q, im_k, local)
    w = torch.randn(4, DIM, generator=torch.Generator().manual_seed(5))
    (local_q[1] * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.encoder_q.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert float(model.encoder_q.backbone.conv1.weight.grad.abs().sum()) > 0  # down to the first layer
    # the same gradient as the loss on forward_query(view) alone (the local query is forward_query)
    model.zero_grad(set_to_none=True)
    (model.forward_query(local[1]) * w).sum().backward()
    for n, p in model.encoder_q.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5, rtol=1e-4), n


# ------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def single_process_group():
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


def _step(model, steps, local: bool = True):
    core = model.module if hasattr(model, "module") else model
    objective = HCSCObjective(HCSCLossConfig(warmup_epochs=0))
    optimizer = torch.optim.SGD(core.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    protos = prototypes()
    gen = torch.Generator().manual_seed(3)
    metrics = []
    for i, ids in enumerate(steps):
        im_q, im_k, lv = views(10 + i)
        metrics.append(hcsc_train_step(model, objective, optimizer, im_q, im_k, ids, protos,
                                       local_views=lv if local else [], generator=gen))
    return metrics


def _assert_same_state(a: MoCo, b: MoCo, atol: float = 1e-6) -> None:
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        if ta.is_floating_point():
            assert torch.allclose(ta, tb, atol=atol, rtol=1e-5), na
        else:
            assert torch.equal(ta, tb), na


def test_ddp_step_with_local_views_equals_the_unwrapped_step(single_process_group):
    model = small_moco()
    plain = copy.deepcopy(model)
    no_local = copy.deepcopy(model)
    initial = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch 2.14 deprecates the argument; the Ray Train loop passes it
        warnings.simplefilter("ignore", FutureWarning)
        ddp = DDP(model, broadcast_buffers=False)
    steps = [torch.tensor([3, 7, 1, 12]), torch.tensor([0, 5, 9, 14])]

    m_ddp = _step(ddp, steps)
    m_plain = _step(plain, steps)
    _step(no_local, steps, local=False)

    # the parameters moved, and the keys were enqueued with their ids
    moved = [not torch.equal(p, p0) for p, p0 in zip(model.encoder_q.parameters(), initial.encoder_q.parameters())]
    assert all(moved)
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.encoder_k.parameters(), initial.encoder_k.parameters()))
    assert int(model.queue_ptr) == 8
    assert model.queue_ids[:8].tolist() == [3, 7, 1, 12, 0, 5, 9, 14]
    assert (model.queue_ids[8:] == -1).all()
    assert _unit_rows(model.queue[:8]) and not torch.allclose(model.queue[:8], initial.queue[:8])
    assert torch.equal(model.queue[8:], initial.queue[8:])

    # DDP with local views computes exactly the un-wrapped step
    _assert_same_state(model, plain)
    for a, b in zip(m_ddp, m_plain):
        assert a.keys() == b.keys() and "loss/prototype" in a
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5), key
    # ... and the local views did contribute to it
    pairs = zip(model.encoder_q.parameters(), no_local.encoder_q.parameters())
    diff = max(float((p - p2).detach().abs().max()) for p, p2 in pairs)
    assert diff > 1e-4

    # embed_pass sees through the wrapper and leaves it in train mode
    x = torch.randn(3, 3, 16, 16)
    feats = embed_pass(ddp, [(x, torch.arange(3), torch.zeros(3))], head=True, backbone=True)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(feats["head"], F.normalize(model.encoder_k(x), dim=1), atol=1e-6)
    model.train()
    assert ddp.training and model.training


# --------------------------------------------------------------------------------------- embed_pass
def test_embed_pass_features_ids_labels_and_mode():
    model = small_moco()
    model.train()
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(3, 3, 16, 16, generator=g), torch.tensor([4, 2, 9], dtype=torch.int32),
                torch.tensor([1, -1, 0])),
               (torch.randn(2, 3, 16, 16, generator=g), torch.tensor([7, 0]), torch.tensor([2, 2], dtype=torch.int16))]
    bn_before = {n: b.clone() for n, b in model.named_buffers()}
    out = embed_pass(model, iter(batches), head=True, backbone=True)
    assert model.training  # restored
    for n, b in model.named_buffers():  # eval mode: BN running statistics untouched
        assert torch.equal(b, bn_before[n]), n

    assert out["ids"].tolist() == [4, 2, 9, 7, 0] and out["ids"].dtype == torch.long
    assert out["labels"].tolist() == [1, -1, 0, 2, 2] and out["labels"].dtype == torch.long
    x = torch.cat([b[0] for b in batches])
    model.eval()
    with torch.no_grad():
        want_head = F.normalize(model.encoder_k(x), dim=1)
        want_backbone = model.backbone_features(x)
    assert out["head"].shape == (5, DIM) and out["backbone"].shape == (5, model.feature_dim)
    assert out["head"].dtype == out["backbone"].dtype == torch.float32
    assert torch.allclose(out["head"], want_head, atol=1e-5)
    assert torch.allclose(out["backbone"], want_backbone, atol=1e-5)
    assert _unit_rows(out["head"])
    # the head features are the momentum encoder's, not the query encoder's
    with torch.no_grad():
        for p in model.encoder_q.head.parameters():
            p.add_(0.5)
    again = embed_pass(model, batches, head=True, backbone=False)
    assert torch.allclose(again["head"], want_head, atol=1e-5)
    assert set(again) == {"ids", "labels", "head"}
    assert not model.training  # an eval-mode model stays in eval mode


def test_embed_pass_only_backbone_and_empty_input():
    model = small_moco()
    x = torch.randn(2, 3, 16, 16)
    only = embed_pass(model, [(x, torch.tensor([1, 0]), torch.tensor([0, 1]))], head=False, backbone=True)
    assert set(only) == {"ids", "labels", "backbone"}
    empty = embed_pass(model, [], head=True, backbone=True)
    assert empty["ids"].shape == (0,) and empty["ids"].dtype == torch.long
    assert empty["labels"].shape == (0,) and empty["labels"].dtype == torch.long
    assert empty["head"].shape == (0, DIM) and empty["backbone"].shape == (0, model.feature_dim)
    assert model.training
    assert set(embed_pass(model, [], head=False, backbone=False)) == {"ids", "labels"}


def test_embed_pass_restores_mode_after_an_error():
    model = small_moco()

    def bad_batches():
        yield torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), torch.tensor([0, 0])
        raise RuntimeError("stream failed")

    with pytest.raises(RuntimeError, match="stream failed"):
        embed_pass(model, bad_batches())
    assert model.training
