"""What SupCon and LACLN (CLCE) share: same-label pair masks, a masked log-sum-exp, and the per-anchor
log-ratio loss both are forms of (:func:`anchor_log_ratio_loss`).

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


def log_hard_negative_weights(s: Tensor, neg: Tensor) -> Tensor:
    """CLCE Eq. 3's ``log beta_ik = log|N_i| + s_ik - LSE_{k' in N_i}(s_ik')`` on negatives (other entries: junk)."""
    n_neg = neg.sum(dim=1, keepdim=True).clamp_min(1).to(s.dtype)
    return torch.log(n_neg) + s - masked_logsumexp(s, neg)[:, None]


def anchor_log_ratio_loss(z: Tensor, labels: Tensor, temperature: float, *, form: str, hard_negatives: bool,
                          name: str) -> tuple[Tensor, Tensor]:
    """``(loss, anchors_skipped)`` of ``-log(positive mass / D_i)`` averaged over the anchors with positives.

    ``D_i`` sums ``exp(s_ip)`` over positives and ``beta_ik exp(s_ik)`` over negatives (``beta`` = 1 without
    ``hard_negatives``). ``form="inside"``: the positive mass is the mean of ``exp(s_ip)`` (inside the log);
    ``"outside"``: the mean over positives of the log ratio. SupCon = outside without hard negatives; LACLN =
    either form with them. Computed in fp32 or wider, autocast off, in log space."""
    check_embeddings_and_labels(z, labels, name)
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    with no_autocast(z):
        z32 = full_precision(z)
        s = z32 @ z32.T / temperature
        pos, neg = same_label_masks(labels)
        # log of each denominator term: s_ip on positives, log(beta_ik) + s_ik on negatives
        log_terms = torch.where(neg, log_hard_negative_weights(s, neg) + s, s) if hard_negatives else s
        log_denominator = masked_logsumexp(log_terms, pos | neg)
        n_pos = pos.sum(dim=1)
        has_pos = n_pos > 0
        if form == "inside":
            log_mean_pos = masked_logsumexp(s, pos) - torch.log(n_pos.clamp_min(1).to(s.dtype))
        else:
            log_mean_pos = torch.where(pos, s, torch.zeros_like(s)).sum(dim=1) / n_pos.clamp_min(1)
        per_anchor = torch.where(has_pos, log_denominator - log_mean_pos, torch.zeros_like(log_mean_pos))
        loss = per_anchor.sum() / has_pos.sum().clamp_min(1)
    return loss, (~has_pos).sum().detach()
