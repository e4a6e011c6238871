"""Same-label pair masks and a masked log-sum-exp: what SupCon and LACLN (CLCE) share.

Every row of a batch is an anchor; its positives are the *other* rows with its label, its negatives
the rows with another label. ``masked_logsumexp`` reduces over such a set in log space, with an
empty set giving a finite placeholder (0) instead of ``-inf``, so that neither the value nor the
gradient turns NaN when a caller selects the row away with ``torch.where``.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import Tensor


def check_embeddings_and_labels(z: Tensor, labels: Tensor, name: str) -> None:
    """Raise unless ``z`` is ``(N, d)`` floating point with N > 0 and ``labels`` is ``(N,)`` integer."""
    if z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"{name}: z must be a floating (N, d) tensor, got {tuple(z.shape)} {z.dtype}")
    if z.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (N = 0)")
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"{name}: labels must be (N,) = ({z.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integer class ids, got {labels.dtype}")


def full_precision(z: Tensor) -> Tensor:
    """``z`` in at least fp32 (fp16/bf16 are upcast; fp32 and fp64 are kept)."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


def no_autocast(z: Tensor) -> AbstractContextManager:
    """Disable autocast on ``z``'s device, so matmuls on upcast tensors stay in full precision."""
    return torch.autocast(device_type=z.device.type, enabled=False)


def same_label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(positives, negatives)``: ``(N, N)`` bool masks; ``positives[i, j]`` = same label and ``j != i``,
    ``negatives[i, j]`` = different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """``log sum_{j: mask} exp(x_j)`` along ``dim`` (max-subtracted); rows with an empty mask give 0.

    The 0 of an empty row is a placeholder with a finite, zero gradient: select it away with
    ``torch.where(mask.any(dim), result, ...)``.
    """
    x = x.masked_fill(~mask, float("-inf"))
    m = x.amax(dim=dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m).sum(dim=dim)
    empty = (~mask.any(dim=dim)).to(s.dtype)
    return torch.log(s + empty) + m.squeeze(dim)
