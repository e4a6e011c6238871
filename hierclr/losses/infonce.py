"""InfoNCE against a queue of keys: MoCo v2's instance loss (HCSC Eq. 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hierclr.losses.selection import NegativeDrop, apply_negative_mask


def info_nce(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    temperature: float = 0.2,
    *,
    neg_mask: Tensor | None = None,
    negative_drop: NegativeDrop = "zero",
) -> Tensor:
    """``-log exp(q.k/T) / (exp(q.k/T) + sum_j exp(q.queue_j/T))``, averaged over the batch (Eq. 1).

    Args:
        q: ``(B, d)`` normalised queries. k: ``(B, d)`` normalised keys (no gradient expected).
        queue: ``(Q, d)`` normalised negatives.
        neg_mask: optional ``(B, Q)`` 0/1 selection of negatives (Eq. 5); how dropped negatives
            are treated is ``negative_drop`` (see :func:`apply_negative_mask`).
    """
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    l_pos = (q * k).sum(dim=1, keepdim=True)
    return info_nce_from_logits(l_pos, q @ queue.detach().T, temperature, neg_mask=neg_mask,
                                negative_drop=negative_drop)


def info_nce_from_logits(
    l_pos: Tensor,
    l_neg: Tensor,
    temperature: float,
    *,
    neg_mask: Tensor | None = None,
    negative_drop: NegativeDrop = "zero",
) -> Tensor:
    """:func:`info_nce` from ``l_pos = q . k`` ``(B, 1)`` and ``l_neg = q . queue`` ``(B, Q)``: ICSC reuses one
    ``l_neg`` for every level's mask (one ``(B, Q, d)`` product and one backward through it, not L)."""
    logits = torch.cat([l_pos, apply_negative_mask(l_neg, neg_mask, negative_drop)], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(l_pos.shape[0], dtype=torch.long, device=l_pos.device))
