"""Supervised contrastive loss (Khosla et al. 2020, "L_out", their Eq. 2): the baseline of CLCE.

Per anchor i, with ``s_ij = z_i . z_j / tau``, positives ``P_i`` (other rows with i's label) and
every other row ``A_i = {a != i}`` in the denominator::

    L_i = -(1 / |P_i|) * sum_{p in P_i} log( exp(s_ip) / sum_{a in A_i} exp(s_ia) )

averaged over the anchors that have positives. This is LACLN's "outside" form with every
hard-negative weight beta = 1 (see :mod:`hierclr.losses.clce`).

Choices: anchors without positives are skipped (left out of the mean) and counted; a batch where
every anchor is skipped gives a 0 that is still connected to the graph. The similarities and the
log-sum-exp are computed in fp32 (fp16/bf16 ``z`` is upcast, autocast disabled), as the spec asks
for the contrastive terms: ``exp(1 / tau)`` and its sums leave fp16's range.
"""
from __future__ import annotations

from torch import Tensor

from hierclr.losses.label_pairs import anchor_log_ratio_loss


def supcon_loss(z: Tensor, labels: Tensor, *, temperature: float = 0.1, return_parts: bool = False):
    """SupCon ``L_out`` over every row of ``z`` as an anchor (module docstring for the formula).

    Args:
        z: ``(N, d)`` L2-normalised embeddings of all views of the batch, stacked along dim 0.
        labels: ``(N,)`` integer class ids (any non-negative values).
        temperature: tau.
        return_parts: also return ``{"anchors_skipped"}`` (detached count of anchors without positives).
    Returns:
        The scalar loss, or ``(loss, parts)`` with ``return_parts=True``.
    """
    loss, skipped = anchor_log_ratio_loss(z, labels, temperature, form="outside", hard_negatives=False,
                                          name="supcon_loss")
    if not return_parts:
        return loss
    return loss, {"anchors_skipped": skipped}
