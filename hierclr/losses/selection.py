"""Negative selection of HCSC: keep probabilities (Eq. 4, Eq. 7), Bernoulli masks, masked logits.

Selection lives with the losses, not in the model: the model only produces embeddings.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

NegativeDrop = Literal["zero", "remove"]
NEGATIVE_DROPS = ("zero", "remove")

# Floor on the temperature in the selection softmaxes (the reference code clamps phi at 1e-3).
PHI_FLOOR = 1e-3


@torch.no_grad()
def instance_keep_prob(queue: Tensor, centroids: Tensor, phi: Tensor, assign: Tensor) -> Tensor:
    """Keep probability of every queue negative for every query, HCSC Eq. 4 with per-prototype phi.

    ``P_j = softmax_k(queue_j . C[k] / max(phi_k, 1e-3))`` over the level's prototypes; for query i
    assigned to prototype ``y_i`` (this epoch's K-means assignment), ``p_ij = 1 - P_j[y_i]``: a
    negative that is likely to belong to the query's own cluster is likely to be dropped.

    Args:
        queue: ``(Q, d)`` normalised keys. centroids: ``(K, d)``. phi: ``(K,)``.
        assign: ``(B,)`` long, the queries' prototypes at this level.
    Returns: ``(B, Q)``.
    """
    logits = (queue @ centroids.T) / phi.clamp_min(PHI_FLOOR)  # (Q, K)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return 1.0 - log_p[:, assign].T.exp()


@torch.no_grad()
def prototype_keep_prob(
    centroids: Tensor,
    next_centroids: Tensor,
    next_phi: Tensor,
    parents: Tensor,
    pos: Tensor,
    neg_ids: Tensor,
) -> Tensor:
    """Keep probability of candidate negative prototypes, HCSC Eq. 7 with per-prototype phi.

    ``S_j = softmax_k(C_n[j] . C_{n+1}[k] / max(phi_{n+1}[k], 1e-3))`` over level n+1; for query i
    with positive prototype ``pos_i`` the keep probability of negative j is
    ``1 - S_j[parent(pos_i)]``: prototypes under the same parent are likely to be dropped.

    Args:
        centroids: ``(M_n, d)`` level n. next_centroids: ``(M_{n+1}, d)``. next_phi: ``(M_{n+1},)``.
        parents: ``(M_n,)`` level n -> n+1. pos: ``(B,)`` positives at level n.
        neg_ids: ``(J,)`` candidate negative ids at level n.
    Returns: ``(B, J)``.
    """
    logits = (centroids[neg_ids] @ next_centroids.T) / next_phi.clamp_min(PHI_FLOOR)  # (J, M_{n+1})
    log_s = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return 1.0 - log_s[:, parents[pos]].T.exp()


@torch.no_grad()
def bernoulli_mask(
    keep_prob: Tensor, low: float, high: float, generator: torch.Generator | None = None
) -> Tensor:
    """A fresh 0/1 mask ``~ Bernoulli(clamp(keep_prob, low, high))`` (Eq. 5 and Eq. 8)."""
    return torch.bernoulli(keep_prob.clamp(low, high), generator=generator)


def apply_negative_mask(neg_logits: Tensor, mask: Tensor | None, negative_drop: NegativeDrop) -> Tensor:
    """Negative logits with unselected entries dropped.

    ``zero`` (official code): a dropped negative's similarity is set to 0, so it still adds
    ``exp(0)`` to the softmax denominator but gives no gradient. ``remove`` (the paper's selected
    set): the dropped negative leaves the denominator (logit -inf).
    """
    if mask is None:
        return neg_logits
    if negative_drop == "zero":
        return neg_logits * mask
    if negative_drop == "remove":
        return neg_logits.masked_fill(mask == 0, float("-inf"))
    raise ValueError(f"negative_drop must be one of {NEGATIVE_DROPS}, got {negative_drop!r}")
