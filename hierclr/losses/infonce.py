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
    l_neg = apply_negative_mask(q @ queue.detach().T, neg_mask, negative_drop)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
