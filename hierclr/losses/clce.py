"""CLCE (Long et al. 2024): cross-entropy plus label-aware contrastive learning with hard negatives.

Eq. 1: ``L_CLCE = (1 - lambda) * CE(logits, y) + lambda * L_LACLN`` (tau = 0.5, lambda = 0.9).
Eq. 2: the multi-class cross-entropy of the classifier head, averaged over rows.
Eq. 3 (LACLN), per anchor i with ``e_ij = exp(z_i . z_j / tau)``, positives ``P_i`` (other rows with
i's label, i itself excluded) and negatives ``N_i`` (rows with another label)::

    beta_ik = |N_i| * e_ik / sum_{k' in N_i} e_ik'          (hard-negative weight, mean 1 over N_i)
    D_i     = sum_{p in P_i} e_ip + sum_{k in N_i} beta_ik * e_ik
    "inside"  (as printed):  L_i = -log( (1 / |P_i|) * sum_{p in P_i} e_ip / D_i )
    "outside" (SupCon-like): L_i = -(1 / |P_i|) * sum_{p in P_i} log( e_ip / D_i )

Choices the paper leaves open, and what is done here:
  * Reduction over anchors: Eq. 3 prints a sum; the mean over anchors with positives is used (so
    lambda keeps its meaning across batch sizes). Anchors without positives are skipped and counted;
    if all are skipped the loss is a 0 still connected to the graph.
  * Average inside or outside the log: the authors' code was not available to check; "inside" (as
    printed) is the default, "outside" the option. With beta = 1, "outside" is SupCon.
  * beta is a function of z and is *not* detached: the gradient flows through the weights as
    through the printed formula (no authors' code to say otherwise).
  * An anchor with positives but no negatives has an empty beta term (0): its "inside" loss is the
    constant ``log|P_i|`` (no gradient) and its "outside" loss ``LSE_p(s_ip) - mean_p(s_ip)``. (The
    1/|P_i| inside the log makes ``log|P_i|`` the floor of the printed form for every anchor.)
  * Everything is in log space (``log beta_ik + s_ik = log|N_i| + 2 s_ik - LSE_{k'}(s_ik')``): the
    squared exponentials overflow fp16 and even fp32 at small tau. The contrastive part is computed
    in fp32 (fp16/bf16 ``z`` is upcast, autocast disabled), as the spec asks.
  * Which features feed which term (Sec. 3.3): LACLN takes the L2-normalised encoder output ``z``,
    CE takes the head's ``logits``; both are inputs here, the model decides where they come from.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hierclr.losses.label_pairs import (
    anchor_log_ratio_loss,
    check_embeddings_and_labels,
    full_precision,
    log_hard_negative_weights,
    no_autocast,
    same_label_masks,
)

LaclnForm = Literal["inside", "outside"]
LACLN_FORMS = ("inside", "outside")


def hard_negative_weights(z: Tensor, labels: Tensor, *, temperature: float = 0.5) -> Tensor:
    """The ``(N, N)`` hard-negative weights beta of Eq. 3 (0 off each anchor's negatives), for analysis.

    Each anchor's weights have mean 1 over its negatives. Not detached.
    """
    check_embeddings_and_labels(z, labels, "hard_negative_weights")
    if temperature <= 0:
        raise ValueError(f"hard_negative_weights: temperature must be > 0, got {temperature}")
    with no_autocast(z):
        z32 = full_precision(z)
        s = z32 @ z32.T / temperature
        _, neg = same_label_masks(labels)
        beta = torch.exp(log_hard_negative_weights(s, neg))
        return torch.where(neg, beta, torch.zeros_like(beta))


def lacln_loss(
    z: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.5,
    form: LaclnForm = "inside",
    return_parts: bool = False,
):
    """LACLN, Eq. 3, over every row of ``z`` as an anchor (module docstring for the formula and choices).

    Args:
        z: ``(N, d)`` L2-normalised embeddings of all views of the batch, stacked along dim 0.
        labels: ``(N,)`` integer class ids (any non-negative values).
        temperature: tau.
        form: ``"inside"`` (the 1/|P_i| average inside the log, as printed) or ``"outside"``
            (SupCon-style mean over positives of the log ratio).
        return_parts: also return ``{"anchors_skipped"}`` (detached count of anchors without positives).
    Returns:
        The scalar loss, or ``(loss, parts)`` with ``return_parts=True``.
    """
    if form not in LACLN_FORMS:
        raise ValueError(f"lacln_loss: form must be one of {LACLN_FORMS}, got {form!r}")
    loss, skipped = anchor_log_ratio_loss(z, labels, temperature, form=form, hard_negatives=True, name="lacln_loss")
    if not return_parts:
        return loss
    return loss, {"anchors_skipped": skipped}


def clce_loss(
    logits: Tensor,
    z: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.5,
    lam: float = 0.9,
    form: LaclnForm = "inside",
    return_parts: bool = False,
):
    """CLCE, Eq. 1: ``(1 - lam) * CE(logits, labels) + lam * lacln_loss(z, labels)``.

    Args:
        logits: ``(N, C)`` classifier-head logits of the same rows as ``z`` (CE averaged over rows;
            ``labels`` must index its columns).
        z, labels, temperature, form: as :func:`lacln_loss`.
        lam: lambda, the weight of LACLN, in [0, 1].
        return_parts: also return ``{"ce", "lacln", "anchors_skipped"}`` (detached).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"clce_loss: lam must be in [0, 1], got {lam}")
    if logits.dim() != 2 or logits.shape[0] != z.shape[0]:
        raise ValueError(f"clce_loss: logits must be (N, C) with N = {z.shape[0]}, got {tuple(logits.shape)}")
    ce = F.cross_entropy(logits, labels)
    lacln, parts = lacln_loss(z, labels, temperature=temperature, form=form, return_parts=True)
    loss = (1.0 - lam) * ce + lam * lacln
    if not return_parts:
        return loss
    return loss, {"ce": ce.detach(), "lacln": lacln.detach(), "anchors_skipped": parts["anchors_skipped"]}
