"""HCAL's loss: per-level prototype InfoNCE on bottom-up aggregated features, adaptively weighted.

Paper: "Hierarchy-Consistent Learning and Adaptive Loss Balancing for Hierarchical Multi-Label
Classification" (arXiv 2508.13452; no public code). Equations as the paper numbers them:

* Eq. 1-2, bottom-up feature aggregation: the feature of a class at level ``k > 1`` is the mean of the
  level-``(k-1)`` features of its child classes (:func:`aggregate_features`).
* Eq. 3-4, prototype perturbation: lives in the model (:meth:`hierclr.models.hcal.HCALHead.level_prototypes`);
  the loss takes the (perturbed, normalised) prototypes as given.
* Eq. 5-7, per-level InfoNCE between features and the prototypes of that level: positive = the
  sample's own class prototype, negatives = every other prototype of the level (:func:`hcal_level_losses`).
* Eq. 9-11, adaptive task weights ``lambda_k = softmax_k(L_k / gamma)``, recomputed every step from the
  current losses and detached (:func:`adaptive_weights`); ``L = sum_k lambda_k L_k`` (:func:`hcal_loss`).

Levels are hierclr's (:mod:`hierclr.labels.hierarchy`): level 0 is the finest, ``1 .. L-1`` coarser;
**paper level k = our level k-1**. ``labels`` are ``(B, L)`` with ``labels[:, l]`` the class at level
``l``; ``-1`` marks a sample unlabelled at that level (ignored there).

Choices where the paper is silent (each an argument):

* ``temperature`` of the InfoNCE (default 0.1).
* How a batch forms class means: within the current batch only, over the classes present in it; a
  parent's feature is the mean of its present children's *class means* (each child class counts once,
  whatever its number of samples), not the mean of its samples.
* ``renormalize`` (default True): the features of every level are L2-normalised before the similarity
  with the (unit) prototypes, i.e. the logits are cosines / temperature. The aggregation chain itself
  uses the plain means (Eq. 2 applied to the un-normalised level features), so level ``l + 1`` is a
  mean of means; only the copy that enters the logits is normalised. False uses the raw means, whose
  norm shrinks with the spread of the children (a per-class softer temperature).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hierclr.losses.label_pairs import full_precision, no_autocast

__all__ = ["adaptive_weights", "aggregate_features", "hcal_level_losses", "hcal_loss"]


def aggregate_features(feats: Tensor, child_labels: Tensor, parent_labels: Tensor) -> Tensor:
    """Bottom-up aggregation (Eq. 1-2): each sample's parent-level feature from the batch's child classes.

    ``g_c`` = mean of the rows of ``feats`` with child label ``c`` (classes present in the batch); sample
    ``i``'s output is the mean of ``g_c`` over the present child classes ``c`` whose parent is
    ``parent_labels[i]`` -- a mean of class means, so a child class with many samples weighs as much as
    one with a single sample. Rows sharing a parent get equal outputs. Cost is linear in the batch
    (``torch.unique`` + ``index_add_``; no loop over classes); gradients flow to every contributing row.

    Args:
        feats: ``(B, d)`` features of the child level.
        child_labels: ``(B,)`` class of each row at the child level.
        parent_labels: ``(B,)`` class of each row at the parent level.

    Returns:
        ``(B, d)``. A row with ``parent_labels < 0`` (unlabelled) contributes nothing and gets a zero row.

    Raises:
        ValueError: a row with a parent label but a negative child label (it cannot be placed in a child
            class), or a child class that has two different parents in the batch (not a tree).
    """
    if feats.dim() != 2:
        raise ValueError(f"feats must be (B, d), got shape {tuple(feats.shape)}")
    B = feats.shape[0]
    child, parent = child_labels.long(), parent_labels.long()
    if child.shape != (B,) or parent.shape != (B,):
        raise ValueError(f"child_labels {tuple(child.shape)} and parent_labels {tuple(parent.shape)} must both "
                         f"be ({B},) for feats {tuple(feats.shape)}")
    orphan = (child < 0) & (parent >= 0)
    if orphan.any():
        r = int(orphan.nonzero()[0])
        raise ValueError(f"row {r} has parent label {int(parent[r])} but child label {int(child[r])}: aggregation "
                         "needs the child class of every row labelled at the parent level")
    rows = (parent >= 0).nonzero().squeeze(1)
    x, c, p = feats[rows], child[rows], parent[rows]
    classes, c_idx, c_count = torch.unique(c, return_inverse=True, return_counts=True)
    parents, p_idx = torch.unique(p, return_inverse=True)
    # g: (K, d) child-class means
    g = x.new_zeros(classes.shape[0], x.shape[1]).index_add_(0, c_idx, x) / c_count.unsqueeze(1).to(x.dtype)
    # compact parent of each present child class (every row of the class writes the same value on a tree)
    parent_of = torch.empty_like(classes).scatter_(0, c_idx, p_idx)
    clash = parent_of[c_idx] != p_idx
    if clash.any():
        r = int(clash.nonzero()[0])
        raise ValueError(f"child class {int(c[r])} has two parents in the batch: {int(parents[parent_of[c_idx[r]]])} "
                         f"and {int(p[r])} (labels are not a tree)")
    n_children = torch.bincount(parent_of, minlength=parents.shape[0])
    h = g.new_zeros(parents.shape[0], x.shape[1]).index_add_(0, parent_of, g) / n_children.unsqueeze(1).to(x.dtype)
    return feats.new_zeros(feats.shape).index_copy(0, rows, h[p_idx])


def hcal_level_losses(
    feats0: Tensor,
    labels: Tensor,
    prototypes: Sequence[Tensor],
    *,
    temperature: float = 0.1,
    aggregate: bool = True,
    renormalize: bool = True,
) -> list[Tensor]:
    """Per-level prototype InfoNCE (Eq. 5-7) on bottom-up aggregated features (Eq. 1-2).

    ``F^0 = feats0``; with ``aggregate``, ``F^l = aggregate_features(F^{l-1}, labels[:, l-1], labels[:, l])``
    for ``l > 0``, otherwise every level reads ``feats0`` (ablation "no feature aggregation"). Level ``l``'s
    loss is the cross-entropy of ``normalize(F^l) @ prototypes[l].T / temperature`` against ``labels[:, l]``,
    averaged over the rows labelled at that level (``0`` with a graph when none is).

    Args:
        feats0: ``(B, d)`` level-0 features (``HCALHead.forward``, L2-normalised).
        labels: ``(B, L)`` class per level, finest first; ``-1`` = unlabelled at that level.
        prototypes: ``L`` tensors ``(C_l, d)``, used as given: pass ``HCALHead.level_prototypes(l)``
            (L2-normalised, perturbed in training). They are not renormalised here.
        temperature: InfoNCE temperature (the paper does not give it; 0.1).
        aggregate: bottom-up aggregation on (the paper) or off (ablation).
        renormalize: L2-normalise each level's features before the similarity (see the module docstring).
            The aggregation chain always uses the un-normalised means.

    Returns:
        ``L`` scalar losses, level 0 first, computed in float32 (half-precision inputs upcast) with autocast
        disabled, so an AMP step gets fp32 logits.

    Raises:
        ValueError: shapes that do not match, ``temperature <= 0``, a label ``>= C_l``, or labels that are not
            a tree within the batch (see :func:`aggregate_features`).
    """
    if labels.dim() != 2 or labels.shape[0] != feats0.shape[0]:
        raise ValueError(f"labels must be (B, L) with B = {feats0.shape[0]} rows of feats0, got {tuple(labels.shape)}")
    num_levels = labels.shape[1]
    if len(prototypes) != num_levels:
        raise ValueError(f"labels have {num_levels} levels but {len(prototypes)} prototype matrices were given")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = labels.long()
    losses = []
    with no_autocast(feats0):  # under AMP the logits would come out bf16: the loss runs in fp32, as the others
        feats = full_precision(feats0)
        for level in range(num_levels):
            if level > 0 and aggregate:
                feats = aggregate_features(feats, labels[:, level - 1], labels[:, level])
            losses.append(_prototype_nce(feats, labels[:, level], prototypes[level], temperature, renormalize, level))
    return losses


def _prototype_nce(feats: Tensor, y: Tensor, protos: Tensor, temperature: float, renormalize: bool,
                   level: int) -> Tensor:
    """Mean over labelled rows of ``-log softmax(feats @ protos.T / temperature)[y]``."""
    if protos.dim() != 2 or protos.shape[1] != feats.shape[1]:
        raise ValueError(f"prototypes[{level}] must be (C, {feats.shape[1]}), got {tuple(protos.shape)}")
    num_classes = protos.shape[0]
    if y.numel() and int(y.max()) >= num_classes:
        raise ValueError(f"label {int(y.max())} at level {level} is out of range: prototypes[{level}] has "
                         f"{num_classes} classes")
    dtype = torch.promote_types(feats.dtype, torch.float32)
    z = feats.to(dtype)
    if renormalize:
        z = F.normalize(z, dim=1)
    logits = z @ protos.to(dtype).T / temperature
    valid = y >= 0
    ce = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
    return ce.masked_fill(~valid, 0.0).sum() / valid.sum().clamp_min(1)


def adaptive_weights(losses: Sequence[Tensor], gamma: float = 0.5) -> Tensor:
    """Eq. 10-11: ``softmax(stack(losses) / gamma)``, detached (the weights are constants for the backward).

    A level with a higher loss (slower convergence) gets a larger weight; ``gamma`` sets how sharp the
    allocation is (large: near uniform; small: all weight on the worst level). Returns ``(L,)``.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if len(losses) == 0:
        raise ValueError("adaptive_weights needs at least one loss")
    return torch.softmax(torch.stack([loss.detach() for loss in losses]) / gamma, dim=0)


def hcal_loss(
    feats0: Tensor,
    labels: Tensor,
    prototypes: Sequence[Tensor],
    *,
    temperature: float = 0.1,
    gamma: float = 0.5,
    aggregate: bool = True,
    adaptive: bool = True,
    renormalize: bool = True,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """HCAL's total loss ``sum_l w_l * L_l`` (Eq. 9).

    ``L_l`` from :func:`hcal_level_losses` (same arguments); ``w = adaptive_weights(L, gamma)`` when
    ``adaptive`` (the paper), else uniform ``1 / L`` (the fixed-weight ablation, Table 2: the plain mean
    of the level losses).

    Returns:
        The scalar total, or with ``return_parts`` ``(total, parts)`` where ``parts`` holds detached 0-d
        tensors ``level{l}`` (``L_l``) and ``weight/level{l}`` (``w_l``), left on the device (no ``.item()``).
    """
    losses = hcal_level_losses(feats0, labels, prototypes, temperature=temperature, aggregate=aggregate,
                               renormalize=renormalize)
    stacked = torch.stack(losses)
    if adaptive:
        weights = adaptive_weights(losses, gamma)
    else:
        weights = torch.full_like(stacked, 1.0 / len(losses)).detach()
    total = (weights * stacked).sum()
    if not return_parts:
        return total
    parts: dict[str, Tensor] = {}
    for level, (loss, w) in enumerate(zip(losses, weights)):
        parts[f"level{level}"] = loss.detach()
        parts[f"weight/level{level}"] = w.detach()
    return total, parts
