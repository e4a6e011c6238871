"""Rank 0's buffers on every rank: what DDP's ``broadcast_buffers=True`` does at each forward, done on demand."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> int:
    """Overwrite every buffer of ``module`` (BatchNorm running statistics and counters) with rank ``src``'s, in
    place; a collective (every rank calls it with the same module structure). Without a process group it does
    nothing. Returns the number of buffers broadcast."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    bufs = list(module.buffers())
    for b in bufs:
        dist.broadcast(b, src)
    return len(bufs)
