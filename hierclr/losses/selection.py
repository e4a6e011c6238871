"""Negative selection of HCSC: keep probabilities (Eq. 4, Eq. 7), Bernoulli masks, masked logits.

Selection lives with the losses, not in the model: the model only produces embeddings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hierclr.clustering.prototypes import Prototypes

NegativeDrop = Literal["zero", "remove"]
NEGATIVE_DROPS = ("zero", "remove")

# Floor on the temperature in the selection softmaxes (the reference code clamps phi at 1e-3).
PHI_FLOOR = 1e-3


# Rows of the queue per block when a whole queue's log-normalisers are computed: bounds the (rows, K) logits.
_LOG_NORM_BLOCK = 4096


@torch.no_grad()
def queue_log_normaliser(keys: Tensor, centroids: Tensor, phi: Tensor) -> Tensor:
    """``log sum_k exp(keys_j . C[k] / max(phi_k, 1e-3))`` per key: the denominator of HCSC Eq. 4.

    It depends on the key and the epoch's prototypes only, never on the query, so a step need not
    recompute it: :class:`SelectionCache` keeps it per queue row. Computed in blocks of rows.

    Args: keys: ``(Q, d)``. centroids: ``(K, d)``. phi: ``(K,)``. Returns: ``(Q,)``.
    """
    phi = phi.clamp_min(PHI_FLOOR)
    parts = [torch.logsumexp((block @ centroids.T) / phi, dim=1) for block in keys.split(_LOG_NORM_BLOCK)]
    return torch.cat(parts) if parts else keys.new_zeros(0)


@torch.no_grad()
def instance_keep_prob(
    queue: Tensor, centroids: Tensor, phi: Tensor, assign: Tensor, log_norm: Tensor | None = None
) -> Tensor:
    """Keep probability of every queue negative for every query, HCSC Eq. 4 with per-prototype phi.

    ``P_j = softmax_k(queue_j . C[k] / max(phi_k, 1e-3))`` over the level's prototypes; for query i
    assigned to prototype ``y_i`` (this epoch's K-means assignment), ``p_ij = 1 - P_j[y_i]``: a
    negative that is likely to belong to the query's own cluster is likely to be dropped.

    Only ``P_j[y_i] = exp(queue_j . C[y_i] / phi_{y_i} - log_norm_j)`` is needed: O(B x Q x d) given
    ``log_norm`` (:func:`queue_log_normaliser` of the queue, e.g. from a :class:`SelectionCache`);
    without it the normaliser is computed here, O(Q x K x d).

    Args:
        queue: ``(Q, d)`` normalised keys. centroids: ``(K, d)``. phi: ``(K,)``.
        assign: ``(B,)`` long, the queries' prototypes at this level. log_norm: ``(Q,)`` or None.
    Returns: ``(B, Q)``.
    """
    if log_norm is None:
        log_norm = queue_log_normaliser(queue, centroids, phi)
    logits = (centroids[assign] @ queue.T) / phi.clamp_min(PHI_FLOOR)[assign, None]  # (B, Q)
    return 1.0 - (logits - log_norm).exp()


@torch.no_grad()
def prototype_log_softmax(centroids: Tensor, next_centroids: Tensor, next_phi: Tensor) -> Tensor:
    """``log S``, ``S_j = softmax_k(C_n[j] . C_{n+1}[k] / max(phi_{n+1}[k], 1e-3))`` (HCSC Eq. 7): ``(M_n, M_{n+1})``."""
    logits = (centroids @ next_centroids.T) / next_phi.clamp_min(PHI_FLOOR)
    return logits - torch.logsumexp(logits, dim=1, keepdim=True)


@torch.no_grad()
def prototype_keep_prob(
    centroids: Tensor,
    next_centroids: Tensor,
    next_phi: Tensor,
    parents: Tensor,
    pos: Tensor,
    neg_ids: Tensor,
    log_s: Tensor | None = None,
) -> Tensor:
    """Keep probability of candidate negative prototypes, HCSC Eq. 7 with per-prototype phi.

    ``S_j = softmax_k(C_n[j] . C_{n+1}[k] / max(phi_{n+1}[k], 1e-3))`` over level n+1; for query i
    with positive prototype ``pos_i`` the keep probability of negative j is
    ``1 - S_j[parent(pos_i)]``: prototypes under the same parent are likely to be dropped.

    Args:
        centroids: ``(M_n, d)`` level n. next_centroids: ``(M_{n+1}, d)``. next_phi: ``(M_{n+1},)``.
        parents: ``(M_n,)`` level n -> n+1. pos: ``(B,)`` positives at level n.
        neg_ids: ``(J,)`` candidate negative ids at level n.
        log_s: the epoch's ``(M_n, M_{n+1})`` :func:`prototype_log_softmax` (a :class:`SelectionCache`
            keeps it), or None to compute the candidates' rows here.
    Returns: ``(B, J)``.
    """
    if log_s is None:
        log_s = prototype_log_softmax(centroids[neg_ids], next_centroids, next_phi)
    else:
        log_s = log_s[neg_ids]
    return 1.0 - log_s[:, parents[pos]].T.exp()


class SelectionCache:
    """What HCSC's keep probabilities need that is fixed for an epoch: O(B x Q) selection per level.

    * ``queue_log_norm[l]``: the ``(Q,)`` :func:`queue_log_normaliser` of every queue row at level l
      (Eq. 4's denominator). Built from the whole queue when the epoch's prototypes arrive (O(Q x K x d),
      once), then refreshed for the rows written by each enqueue (:meth:`enqueued`, O(B x K x d)).
    * ``proto_log_s[n]``: :func:`prototype_log_softmax` of level n against level n+1 (Eq. 7).

    It stays exact only if every queue write goes through :meth:`enqueued` (the training step does
    this); a resumed run builds a new cache from the restored queue.
    """

    def __init__(self, prototypes: Prototypes, queue: Tensor) -> None:
        self.prototypes = prototypes
        self.queue_log_norm = torch.stack([
            queue_log_normaliser(queue, C, phi) for C, phi in zip(prototypes.centroids, prototypes.phi)
        ])  # (L, Q)
        cents, phis = prototypes.centroids, prototypes.phi
        self.proto_log_s = tuple(prototype_log_softmax(cents[n], cents[n + 1], phis[n + 1])
                                 for n in range(prototypes.num_levels - 1))

    @torch.no_grad()
    def enqueued(self, queue: Tensor, slots: Tensor) -> None:
        """Refresh the log-normalisers of the queue rows ``slots`` (just written by an enqueue)."""
        keys = queue[slots]
        for level, (C, phi) in enumerate(zip(self.prototypes.centroids, self.prototypes.phi)):
            self.queue_log_norm[level, slots] = queue_log_normaliser(keys, C, phi).to(self.queue_log_norm.dtype)

    def check_covers(self, prototypes: Prototypes) -> None:
        """Raise unless ``prototypes`` are (the finest levels of) the prototypes this cache was built for."""
        mine = self.prototypes.centroids
        if prototypes.num_levels > len(mine) or any(c is not m for c, m in zip(prototypes.centroids, mine)):
            raise ValueError(f"SelectionCache was built for the prototypes of epoch {self.prototypes.epoch}, "
                             f"not for these (epoch {prototypes.epoch}): build a new cache for new prototypes")


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
