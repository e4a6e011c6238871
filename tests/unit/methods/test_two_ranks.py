"""What needs a real 2-process gloo group (plain torch.distributed, no Ray), checked in one spawned pair: a pair
costs ~20 s on the loaded 2-core CI machine, so every 2-rank check rides on the same spawn.

* supervised: the global-batch gather and the two DDP loss scalings (``loss.ddp_scale``);
* contrastive: ``model.embed_buffers`` (rank 0's BatchNorm statistics before an embedding pass).
"""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hierclr.config.supervised import load_supervised_config
from hierclr.losses.supcon import supcon_loss
from hierclr.losses.varcon import varcon_loss
from hierclr.methods.contrastive import sync_embedding_buffers
from hierclr.methods.contrastive_step import embed_pass
from hierclr.methods.supervised_step import ddp_loss_scale, gather_with_grad
from hierclr.models import MoCo


def _scale_cfg(rule: str):
    return load_supervised_config("digits-finetune", ["model.backbone=resnet10", f"loss.ddp_scale={rule}"])


def _supervised(rank: int, world: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    result = {}
    for loss_name in ("supcon", "varcon"):
        for rule in ("official", "world_size"):
            torch.manual_seed(0)
            lin = torch.nn.Linear(x.shape[1], 6)
            part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            z, yy = gather_with_grad(F.normalize(lin(x[part]), dim=1), y[part])
            scale = ddp_loss_scale(_scale_cfg(rule))
            loss = (supcon_loss(z, yy) if loss_name == "supcon" else varcon_loss(z, yy)) * scale
            loss.backward()
            for p in lin.parameters():  # what DDP does: average the ranks' gradients
                dist.all_reduce(p.grad)
                p.grad /= world
            result[loss_name, rule] = {"scale": scale, "loss": loss.detach() / scale,
                                       "grads": [p.grad for p in lin.parameters()]}
    return result


def _embedding(rank: int) -> dict:
    """Both ranks start from the same MoCo, train-mode forwards on rank-specific data make their BatchNorm
    statistics differ, then each embeds the same images: per_rank first, then after the rank-0 sync."""
    torch.manual_seed(0)
    moco = MoCo("resnet10", dim=8, hidden_dim=16, queue_size=8, cifar_stem=True)
    g = torch.Generator().manual_seed(100 + rank)
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(6, 3, 8, 8, generator=g) * (1 + 2 * rank) + rank
            moco.encoder_q(x)
            moco.encoder_k(x)
    images = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    batches = [(images, torch.arange(5), torch.zeros(5, dtype=torch.long))]
    own = embed_pass(moco, batches, head=True, backbone=True)
    rank0_stats = None
    if rank == 0:
        rank0_stats = [b.clone() for b in moco.encoder_k.buffers()]
    queue = moco.queue.clone()
    sync_embedding_buffers(moco, "per_rank")  # the option: nothing moves
    unchanged = embed_pass(moco, batches, head=True, backbone=True)
    sync_embedding_buffers(moco, "rank0")
    synced = embed_pass(moco, batches, head=True, backbone=True)
    return {"own": own, "unchanged": unchanged, "synced": synced, "rank0_stats": rank0_stats,
            "stats": [b.clone() for b in moco.encoder_k.buffers()], "queue_kept": torch.equal(queue, moco.queue)}


def _worker(rank: int, world: int, port: int, x: torch.Tensor, y: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    result = {"supervised": _supervised(rank, world, x, y), "embedding": _embedding(rank)}
    torch.save(result, f"{out}.rank{rank}")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path_factory.mktemp("two_ranks") / "result"
    mp.spawn(_worker, args=(2, port, x, y, str(out)), nprocs=2, join=True)
    return x, y, [torch.load(f"{out}.rank{r}") for r in range(2)]


def test_global_batch_gather_and_the_two_ddp_scalings(two_ranks):
    """Others' rows detached (SupCon and VarCon). ``ddp_scale: world_size``: after DDP's gradient average the
    gradient equals the single-process gradient of the whole batch's loss. ``official`` (the default, as the
    VarCon code: the loss unscaled): half of it (1 / world)."""
    x, y, (got, _) = two_ranks
    got = got["supervised"]
    assert _scale_cfg("official").loss.ddp_scale == load_supervised_config("digits-finetune").loss.ddp_scale
    for loss_name in ("supcon", "varcon"):
        torch.manual_seed(0)
        lin = torch.nn.Linear(5, 6)
        z = F.normalize(lin(x), dim=1)
        want = supcon_loss(z, y) if loss_name == "supcon" else varcon_loss(z, y)
        want.backward()
        assert got[loss_name, "official"]["scale"] == 1 and got[loss_name, "world_size"]["scale"] == 2
        for rule, factor in (("world_size", 1.0), ("official", 0.5)):
            assert got[loss_name, rule]["loss"].item() == pytest.approx(want.item(), rel=1e-5)
            for a, b in zip(got[loss_name, rule]["grads"], [p.grad for p in lin.parameters()]):
                assert torch.allclose(a, factor * b, atol=1e-6), (loss_name, rule)


def test_embedding_uses_rank0_batchnorm_statistics(two_ranks):
    """Issue 17 item 5: the E-step (momentum encoder head) and kNN-monitor (query backbone) features of the same
    images differ between ranks with their own statistics, and after the broadcast are rank 0's on both."""
    _, _, (r0, r1) = two_ranks
    e0, e1 = r0["embedding"], r1["embedding"]
    for key in ("head", "backbone"):
        assert not torch.allclose(e0["own"][key], e1["own"][key], atol=1e-3), key
        assert torch.equal(e0["unchanged"][key], e0["own"][key]) and torch.equal(e1["unchanged"][key], e1["own"][key])
        assert torch.equal(e0["synced"][key], e0["own"][key])  # rank 0 keeps its own network
        assert torch.equal(e1["synced"][key], e0["own"][key])  # rank 1 now embeds exactly as rank 0
    for a, b in zip(e1["stats"], e0["rank0_stats"]):
        assert torch.equal(a, b)
    assert e0["queue_kept"] and e1["queue_kept"]
    from hierclr.config.pretrain import load_config

    assert load_config(None, []).model.embed_buffers == "rank0"
