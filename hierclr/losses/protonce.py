"""Prototypical contrast: PCL's ProtoNCE (HCSC Eq. 2), the baseline PCSC builds on, and the logits PCSC shares."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hierclr.clustering.prototypes import Prototypes
from hierclr.losses.selection import NegativeDrop, apply_negative_mask


def batch_negative_candidates(pos: Tensor, num_prototypes: int) -> Tensor:
    """``(M,)`` bool: prototypes that are no sample's positive, the batch-shared negative candidates.

    The reference code builds this set from ``range(max assignment)`` and so also loses the highest
    prototype id (an off-by-one later fixed in PCL); hierclr always uses every prototype.
    """
    cand = torch.ones(num_prototypes, dtype=torch.bool, device=pos.device)
    cand[pos] = False
    return cand


def prototype_logits(
    q: Tensor,
    centroids: Tensor,
    phi: Tensor,
    pos: Tensor,
    candidates: Tensor,
    *,
    neg_mask: Tensor | None = None,
    negative_drop: NegativeDrop = "zero",
) -> Tensor:
    """``(B, 1 + M)`` logits ``[q.C[pos]/phi[pos], q.C[j]/phi[j] for every j]`` (Eq. 2).

    Column 0 is the positive. Column ``1 + j`` is prototype j as a negative: ``-inf`` (absent) where
    ``candidates[j]`` is False, dropped per ``negative_drop`` where ``neg_mask[:, j] == 0``. Keeping
    every prototype as a column (instead of gathering the candidates) avoids a host sync per step.
    """
    sim = q @ centroids.T  # (B, M)
    pos_logit = sim.gather(1, pos[:, None]) / phi[pos][:, None]
    neg = apply_negative_mask(sim, neg_mask, negative_drop) / phi[None, :]
    neg = neg.masked_fill(~candidates[None, :], float("-inf"))
    return torch.cat([pos_logit, neg], dim=1)


def cross_entropy_first(logits: Tensor) -> Tensor:
    """Mean cross-entropy with the positive in column 0."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def proto_nce_loss(
    q: Tensor,
    prototypes: Prototypes,
    ids: Tensor,
    *,
    num_negatives: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """PCL's ProtoNCE prototype term (PCL Eq. 11, as ``pcl/builder.py`` computes it), averaged over levels.

    Per level the candidates are the positive prototype of **every** sample in the batch, one column per
    sample in batch order, followed by the prototypes that are no sample's positive (a uniform random
    subset of ``num_negatives`` of them when given: PCL samples ``r``); the label of sample ``i`` is
    column ``i``. So another sample's positive is a negative of sample ``i`` (twice its own positive's
    logit when they share a prototype), unlike HCSC's rule (:func:`~hierclr.losses.hcsc.pcsc_loss`),
    which removes every batch positive from the negatives. Every logit is divided by its prototype's
    phi. PCL v2's full loss is ``info_nce + proto_nce_loss`` (:class:`~hierclr.losses.objective.PCLObjective`).
    """
    losses, used = [], []
    target = torch.arange(q.shape[0], device=q.device)
    for level in range(prototypes.num_levels):
        C, phi = prototypes.centroids[level], prototypes.phi[level]
        pos = prototypes.assignments[ids, level]
        cand = batch_negative_candidates(pos, C.shape[0])
        if num_negatives is not None:
            score = torch.rand(C.shape[0], generator=generator, device=C.device if generator is None else generator.device)
            score = score.to(C.device).masked_fill(~cand, -1.0)
            keep = torch.zeros_like(cand)
            keep[score.topk(min(num_negatives, C.shape[0])).indices] = True
            cand = cand & keep
        used.append(cand)
        batch_pos = (q @ C[pos].T) / phi[pos][None, :]  # (B, B): column j = sample j's positive
        neg = (q @ C.T / phi[None, :]).masked_fill(~cand[None, :], float("-inf"))  # absent columns: -inf
        losses.append(F.cross_entropy(torch.cat([batch_pos, neg], dim=1), target))
    level_losses = torch.stack(losses)
    return level_losses.mean(), {"level_losses": level_losses.detach(), "candidates": used}
