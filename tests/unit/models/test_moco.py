"""Tests for hierclr.models.moco (MoCo v2 model, queue, momentum encoder, all-gather path)."""

import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hierclr.models import MoCo

DIM = 16


def small_moco(queue_size: int = 8, momentum: float = 0.9) -> MoCo:
    torch.manual_seed(0)
    return MoCo(
        "resnet18",
        dim=DIM,
        hidden_dim=32,
        queue_size=queue_size,
        momentum=momentum,
        cifar_stem=True,
    )


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def perturb_query_encoder(model: MoCo) -> None:
    """Move encoder_q's parameters away from encoder_k's (deterministically)."""
    g = torch.Generator().manual_seed(2)
    for p in model.encoder_q.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))


# --- construction -------------------------------------------------------------------------------


def test_key_encoder_starts_as_frozen_copy_of_query_encoder():
    model = small_moco()
    q_named = dict(model.encoder_q.named_parameters())
    k_named = dict(model.encoder_k.named_parameters())
    assert q_named.keys() == k_named.keys()
    for name, p_q in q_named.items():
        assert torch.equal(p_q, k_named[name]), name
        assert p_q.requires_grad
        assert not k_named[name].requires_grad
    for (name, b_q), (_, b_k) in zip(
        model.encoder_q.named_buffers(), model.encoder_k.named_buffers()
    ):
        assert torch.equal(b_q, b_k), name
    # The two encoders must not share storage.
    assert (
        model.encoder_q.head[0].weight.data_ptr()
        != model.encoder_k.head[0].weight.data_ptr()
    )


def test_structure_properties_and_default_hidden_dim():
    torch.manual_seed(0)
    model = MoCo("resnet18", dim=DIM, queue_size=8, cifar_stem=True)
    assert model.queue_size == 8
    assert model.dim == DIM
    assert model.encoder_q.head[0].in_features == 512
    assert (
        model.encoder_q.head[0].out_features == 512
    )  # hidden_dim defaults to feature dim
    assert model.encoder_q.head[2].out_features == DIM
    assert model.encoder_q.backbone.conv1.kernel_size == (3, 3)


def test_queue_buffers_at_init():
    model = small_moco(queue_size=8)
    assert model.queue.shape == (8, DIM) and model.queue.dtype == torch.float32
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(8))
    assert model.queue_ids.dtype == torch.long
    assert torch.equal(model.queue_ids, torch.full((8,), -1))
    assert int(model.queue_ptr) == 0
    state = model.state_dict()
    assert {"queue", "queue_ids", "queue_ptr"} <= state.keys()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queue_size": 0}, "queue_size"),
        ({"momentum": 1.5}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"dim": 0}, "dim"),
        ({"hidden_dim": 0}, "hidden_dim"),
    ],
)
def test_constructor_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MoCo("resnet18", cifar_stem=True, **kwargs)


def test_constructor_rejects_unknown_backbone():
    with pytest.raises(ValueError, match="vit_tiny"):
        MoCo("vit_tiny")


# --- momentum update ----------------------------------------------------------------------------


def test_momentum_update_is_parameter_ema_and_leaves_buffers():
    m = 0.9
    model = small_moco(momentum=m)
    perturb_query_encoder(model)
    # Give encoder_q different BN running statistics than encoder_k.
    model.train()
    with torch.no_grad():
        model.encoder_q(images(4))
    k_old = [p.clone() for p in model.encoder_k.parameters()]
    q_now = [p.clone() for p in model.encoder_q.parameters()]
    k_buffers = {name: b.clone() for name, b in model.encoder_k.named_buffers()}
    q_buffers = dict(model.encoder_q.named_buffers())
    assert not torch.equal(
        q_buffers["backbone.bn1.running_mean"], k_buffers["backbone.bn1.running_mean"]
    )

    model.momentum_update()

    for p_k, old, q in zip(model.encoder_k.parameters(), k_old, q_now):
        expected = m * old + (1 - m) * q
        torch.testing.assert_close(p_k, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p_k, old)
        assert not p_k.requires_grad
    for name, b in model.encoder_k.named_buffers():
        assert torch.equal(b, k_buffers[name]), f"momentum_update changed buffer {name}"
    # encoder_q itself is untouched.
    for p_q, q in zip(model.encoder_q.parameters(), q_now):
        assert torch.equal(p_q, q)


def test_momentum_zero_copies_and_one_freezes():
    model = small_moco()
    perturb_query_encoder(model)
    k_old = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum = 1.0
    model.momentum_update()
    for p_k, old in zip(model.encoder_k.parameters(), k_old):
        assert torch.equal(p_k, old)
    model.momentum = 0.0
    model.momentum_update()
    for p_k, p_q in zip(model.encoder_k.parameters(), model.encoder_q.parameters()):
        assert torch.equal(p_k, p_q)


# --- queue --------------------------------------------------------------------------------------


def test_enqueue_writes_at_pointer_and_wraps():
    model = small_moco(queue_size=8)
    initial = model.queue.clone()
    g = torch.Generator().manual_seed(3)
    batches = [F.normalize(torch.randn(3, DIM, generator=g), dim=1) for _ in range(3)]
    ids = [torch.arange(3) + 10 * (i + 1) for i in range(3)]

    model.enqueue(batches[0], ids[0])
    assert int(model.queue_ptr) == 3
    assert torch.equal(model.queue[:3], batches[0])
    assert torch.equal(model.queue[3:], initial[3:])
    assert model.queue_ids.tolist() == [10, 11, 12, -1, -1, -1, -1, -1]

    model.enqueue(batches[1], ids[1])
    assert int(model.queue_ptr) == 6

    # 3 keys from slot 6: slots 6, 7, then wrap to 0.
    model.enqueue(batches[2], ids[2])
    assert int(model.queue_ptr) == 1
    expected = torch.cat([batches[2][2:], batches[0][1:], batches[1], batches[2][:2]])
    assert torch.equal(model.queue, expected)
    assert model.queue_ids.tolist() == [32, 11, 12, 20, 21, 22, 30, 31]


def test_enqueue_full_queue_batch_keeps_pointer():
    model = small_moco(queue_size=8)
    model.enqueue(F.normalize(torch.randn(5, DIM), dim=1), torch.arange(5))
    keys = F.normalize(torch.randn(8, DIM), dim=1)
    model.enqueue(keys, torch.arange(100, 108))
    assert int(model.queue_ptr) == 5
    assert torch.equal(model.queue, torch.roll(keys, shifts=5, dims=0))
    assert model.queue_ids.tolist() == [103, 104, 105, 106, 107, 100, 101, 102]


def test_enqueue_rejects_oversized_and_misshaped_batches():
    model = small_moco(queue_size=8)
    with pytest.raises(ValueError, match="9"):
        model.enqueue(torch.randn(9, DIM), torch.arange(9))
    with pytest.raises(ValueError, match="keys"):
        model.enqueue(torch.randn(3, DIM + 1), torch.arange(3))
    with pytest.raises(ValueError, match="ids"):
        model.enqueue(torch.randn(3, DIM), torch.arange(4))
    assert int(model.queue_ptr) == 0
    assert torch.equal(model.queue_ids, torch.full((8,), -1))


# --- forward passes -----------------------------------------------------------------------------


def test_forward_returns_unit_queries_with_grad_and_keys_without():
    model = small_moco()
    perturb_query_encoder(model)
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    model.train()
    im_q, im_k = images(2, seed=4), images(2, seed=5)

    q, k = model(im_q, im_k)

    assert q.shape == k.shape == (2, DIM)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(k.norm(dim=1), torch.ones(2))
    assert q.requires_grad
    assert not k.requires_grad and k.grad_fn is None
    # forward() momentum-updated the key encoder before computing k ...
    assert any(
        not torch.equal(p, old)
        for p, old in zip(model.encoder_k.parameters(), k_before)
    )
    # ... and forward_key() alone does not update it again.
    k_after = [p.clone() for p in model.encoder_k.parameters()]
    torch.testing.assert_close(model.forward_key(im_k), k)
    for p, old in zip(model.encoder_k.parameters(), k_after):
        assert torch.equal(p, old)

    q.sum().backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_embed_is_normalised_momentum_encoder_output():
    model = small_moco(momentum=0.5)
    perturb_query_encoder(model)
    model.momentum_update()  # encoder_k now differs from encoder_q
    model.eval()
    x = images(3)
    with torch.no_grad():
        expected = F.normalize(model.encoder_k.head(model.encoder_k.backbone(x)), dim=1)
        from_query = F.normalize(
            model.encoder_q.head(model.encoder_q.backbone(x)), dim=1
        )
    emb = model.embed(x)
    assert not emb.requires_grad
    torch.testing.assert_close(emb, expected)
    assert not torch.allclose(emb, from_query)


def test_backbone_features_are_query_encoder_avgpool_features():
    model = small_moco(momentum=0.5)
    perturb_query_encoder(model)
    model.momentum_update()
    model.eval()
    x = images(3)
    feats = model.backbone_features(x)
    assert feats.shape == (3, 512)
    assert not feats.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(feats, model.encoder_q.backbone(x))
        assert not torch.allclose(feats, model.encoder_k.backbone(x))


def test_models_package_does_not_import_ray():
    code = "import sys, hierclr.models; assert 'ray' not in sys.modules, 'hierclr.models imported ray'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- torch.distributed: all-gathered queue and shuffle-BN ---------------------------------------

WORLD = 2
PER_RANK = 3  # keys per rank and step; global batch 6 does not divide the queue of 16
DIST_QUEUE = 16
DIST_STEPS = 3
SHUFFLE_BATCH = 2  # images per rank for the shuffle-BN check
SHUFFLE_SEED = 123


def rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    keys = F.normalize(torch.randn(PER_RANK, DIM, generator=g), dim=1)
    ids = 100 * rank + 10 * step + torch.arange(PER_RANK)
    return keys, ids


def _distributed_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = small_moco(
            queue_size=DIST_QUEUE
        )  # same seed: identical model on both ranks
        for step in range(DIST_STEPS):
            model.enqueue(*rank_batch(rank, step))

        x = images(WORLD * SHUFFLE_BATCH)[
            rank * SHUFFLE_BATCH : (rank + 1) * SHUFFLE_BATCH
        ]
        model.eval()  # first, before train mode changes the BN running statistics
        k_eval = model.forward_key(x)
        model.train()
        torch.manual_seed(SHUFFLE_SEED)  # rank 0's permutation is the one broadcast
        k_train = model.forward_key(x)
        torch.save(
            {
                "queue": model.queue,
                "queue_ids": model.queue_ids,
                "queue_ptr": model.queue_ptr,
                "k_train": k_train,
                "k_eval": k_eval,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_distributed_enqueue_gathers_in_rank_order_and_shuffle_bn_unshuffles(tmp_path):
    mp.spawn(
        _distributed_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True
    )
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # Reference queue: one global batch per step, ranks concatenated in order, wrapping at 16.
    reference = small_moco(queue_size=DIST_QUEUE)
    expected_queue = reference.queue.clone()
    expected_ids = torch.full((DIST_QUEUE,), -1)
    slot = 0
    for step in range(DIST_STEPS):
        for rank in range(WORLD):
            keys, ids = rank_batch(rank, step)
            for key, id_ in zip(keys, ids):
                expected_queue[slot] = key
                expected_ids[slot] = id_
                slot = (slot + 1) % DIST_QUEUE
    assert slot == 2  # the last step wrapped around
    for rank, res in enumerate(results):
        assert torch.equal(res["queue"], expected_queue), f"rank {rank} queue"
        assert torch.equal(res["queue_ids"], expected_ids), f"rank {rank} queue_ids"
        assert int(res["queue_ptr"]) == slot

    # Shuffle-BN: in eval mode BN does not depend on the batch, so the keys must equal the plain
    # key encoder's output for this rank's own images (the unshuffle put every row back).
    x_all = images(WORLD * SHUFFLE_BATCH)
    with torch.no_grad():
        reference.eval()
        plain = F.normalize(reference.encoder_k(x_all), dim=1)
        # Train mode: each rank's BN saw the chunk of rank 0's permutation that it was given.
        reference.train()
        torch.manual_seed(SHUFFLE_SEED)
        perm = torch.randperm(WORLD * SHUFFLE_BATCH)
        shuffled = torch.empty_like(plain)
        for chunk in perm.view(WORLD, -1):
            shuffled[chunk] = F.normalize(reference.encoder_k(x_all[chunk]), dim=1)
    for rank, res in enumerate(results):
        own = slice(rank * SHUFFLE_BATCH, (rank + 1) * SHUFFLE_BATCH)
        torch.testing.assert_close(res["k_eval"], plain[own], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res["k_train"], shuffled[own], rtol=1e-4, atol=1e-5)
