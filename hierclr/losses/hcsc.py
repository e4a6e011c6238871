"""HCSC's two selective contrastive losses: ICSC (Eq. 4-6) and PCSC (Eq. 7-9).

Both take the epoch's :class:`~hierclr.clustering.Prototypes` and the batch's dataset ``ids``
(which index the prototypes' assignments), draw fresh Bernoulli selection masks every call unless
``masks`` are given, and return ``(loss, info)``; ``info`` holds the masks used, per-level losses
and the kept fraction per level (detached tensors: no host sync here).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from hierclr.clustering.prototypes import Prototypes
from hierclr.losses.infonce import info_nce_from_logits
from hierclr.losses.protonce import batch_negative_candidates, cross_entropy_first, prototype_logits
from hierclr.losses.selection import (
    NegativeDrop,
    SelectionCache,
    bernoulli_mask,
    instance_keep_prob,
    prototype_keep_prob,
)

LevelReduction = Literal["sum", "mean"]
LEVEL_REDUCTIONS = ("sum", "mean")

# Clamps of the keep probabilities before the Bernoulli draw (reference code).
INSTANCE_KEEP_CLAMP = (0.0, 0.999)
PROTOTYPE_KEEP_CLAMP = (1e-4, 0.999)


def _check_masks(masks: Sequence[Tensor] | None, num_levels: int, name: str) -> None:
    if masks is not None and len(masks) != num_levels:
        raise ValueError(f"{name}: {len(masks)} masks given for {num_levels} prototype levels")


def icsc_loss(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    prototypes: Prototypes,
    ids: Tensor,
    *,
    temperature: float = 0.2,
    negative_drop: NegativeDrop = "zero",
    level_reduction: LevelReduction = "sum",
    masks: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    cache: SelectionCache | None = None,
) -> tuple[Tensor, dict]:
    """Instance-wise contrastive selective coding, Eq. 6 over the levels of ``prototypes``.

    Per level l: keep probability of each queue negative for each query (Eq. 4, via the query's
    K-means assignment at level l), a Bernoulli mask (Eq. 5, clamped to [0, 0.999]) and InfoNCE
    with the selected negatives (Eq. 1). Levels are summed (official code) or averaged
    (``level_reduction="mean"``, the paper's Eq. 6).

    Args:
        masks: one ``(B, Q)`` 0/1 tensor per level, used as-is instead of drawing (tests, analysis,
            and the local views of multi-crop, which reuse the global view's masks).
        cache: the epoch's :class:`SelectionCache` for ``prototypes`` and ``queue``: Eq. 4 at O(B x Q x d)
            per level instead of O(Q x K x d); same probabilities up to float rounding.
    """
    if level_reduction not in LEVEL_REDUCTIONS:
        raise ValueError(f"level_reduction must be one of {LEVEL_REDUCTIONS}, got {level_reduction!r}")
    L = prototypes.num_levels
    _check_masks(masks, L, "icsc_loss")
    queue = queue.detach()
    if cache is not None and masks is None:
        cache.check_covers(prototypes)
    if temperature <= 0:
        raise ValueError(f"icsc_loss: temperature must be > 0, got {temperature}")
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.T  # shared by the levels: only the masks differ
    used, losses = [], []
    for level in range(L):
        if masks is None:
            assign = prototypes.assignments[ids, level]
            log_norm = cache.queue_log_norm[level] if cache is not None else None
            keep = instance_keep_prob(queue, prototypes.centroids[level], prototypes.phi[level], assign, log_norm)
            mask = bernoulli_mask(keep, *INSTANCE_KEEP_CLAMP, generator=generator)
        else:
            mask = masks[level].to(q.dtype)
        used.append(mask)
        losses.append(info_nce_from_logits(l_pos, l_neg, temperature, neg_mask=mask, negative_drop=negative_drop))
    level_losses = torch.stack(losses)
    loss = level_losses.sum() if level_reduction == "sum" else level_losses.mean()
    info = {
        "masks": used,
        "level_losses": level_losses.detach(),
        "kept_fraction": torch.stack([m.mean() for m in used]).detach(),
    }
    return loss, info


def pcsc_loss(
    q: Tensor,
    prototypes: Prototypes,
    ids: Tensor,
    *,
    negative_drop: NegativeDrop = "zero",
    selection: bool = True,
    masks: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    cache: SelectionCache | None = None,
) -> tuple[Tensor, dict]:
    """Prototypical contrastive selective coding, Eq. 9: ProtoNCE per level, averaged over levels.

    Per level n: positive = the sample's assigned prototype; candidates = every prototype that is
    no sample's positive in the batch; below the top level each candidate is kept with the
    probability of Eq. 7 (clamped to [1e-4, 0.999]) by a fresh Bernoulli draw (Eq. 8); the top
    level uses all candidates. Every logit is divided by its prototype's phi.

    Args:
        selection: False uses every candidate at every level (ablation "PS off").
        masks: one ``(B, M_n)`` 0/1 tensor per level over *all* level-n prototypes (entries of
            non-candidates are ignored), used as-is instead of drawing.
        cache: the epoch's :class:`SelectionCache` for ``prototypes``: Eq. 7's softmax read, not recomputed.
    Returns:
        ``info["kept_fraction"][n]``: fraction of (query, candidate) pairs kept at level n.
    """
    L = prototypes.num_levels
    _check_masks(masks, L, "pcsc_loss")
    if cache is not None and masks is None and selection:
        cache.check_covers(prototypes)
    used, losses, kept = [], [], []
    for level in range(L):
        C, phi = prototypes.centroids[level], prototypes.phi[level]
        M = C.shape[0]
        pos = prototypes.assignments[ids, level]
        cand = batch_negative_candidates(pos, M)
        mask = None
        if masks is not None:
            mask = masks[level].to(q.dtype)
        elif selection and level < L - 1:
            keep = prototype_keep_prob(
                C, prototypes.centroids[level + 1], prototypes.phi[level + 1], prototypes.parents[level],
                pos, torch.arange(M, device=C.device), cache.proto_log_s[level] if cache is not None else None,
            )
            mask = bernoulli_mask(keep, *PROTOTYPE_KEEP_CLAMP, generator=generator)
        used.append(mask)
        logits = prototype_logits(q, C, phi, pos, cand, neg_mask=mask, negative_drop=negative_drop)
        losses.append(cross_entropy_first(logits))
        if mask is None:
            kept.append(torch.ones((), device=q.device))
        else:
            n_cand = cand.sum().clamp_min(1) * mask.shape[0]
            kept.append((mask * cand[None, :]).sum() / n_cand)
    level_losses = torch.stack(losses)
    info = {
        "masks": used,
        "level_losses": level_losses.detach(),
        "kept_fraction": torch.stack(kept).detach(),
    }
    return level_losses.mean(), info
