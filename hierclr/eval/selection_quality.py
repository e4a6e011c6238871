"""How well ICSC's negative selection drops false negatives, with labels known (HCSC appendix F.2, Fig. 5).

ICSC draws, per level l, a keep mask over the queue negatives of every query (Eq. 4-5). With the training
split's labels, a queue entry of the query's own (finest) class is a *false negative*; one of another class a
*true negative*. Fig. 5 follows, along training, how precisely and how completely the dropped negatives are the
false ones, and how many true negatives survive:

* ``precision``: dropped false negatives / dropped negatives;
* ``recall``: dropped false negatives / false negatives;
* ``kept_true_negatives``: kept true negatives / true negatives;
* ``false_negative_rate``: false negatives / labelled pairs, the no-selection baseline (random dropping has
  this precision).

Counts, not ratios, are what add up over steps and ranks: :func:`selection_counts` counts one step,
:class:`SelectionCounter` sums them on the device (no host sync per step), and :func:`selection_metrics` turns
an epoch's summed counts into ratios. Pairs with an unlabelled query or queue entry (label -1, or a queue slot
not yet filled: id -1) are left out of every count.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["COUNT_NAMES", "SelectionCounter", "selection_counts", "selection_metrics", "selection_quality"]

COUNT_NAMES = (
    "pairs",  # (query, queue entry) pairs with both labels known
    "false_negatives",  # ... of the same class
    "true_negatives",  # ... of different classes
    "dropped",  # labelled pairs whose negative the mask dropped
    "dropped_false_negatives",
    "kept_true_negatives",
)


def selection_counts(keep_mask: Tensor, query_labels: Tensor, queue_labels: Tensor) -> dict[str, Tensor]:
    """Counts of one selection mask: the :data:`COUNT_NAMES`, each a 0-dim int64 tensor on the mask's device.

    Args:
        keep_mask: ``(B, K)``, nonzero / True where query i keeps queue entry j as a negative.
        query_labels: ``(B,)`` the queries' classes; -1 = unlabelled.
        queue_labels: ``(K,)`` the queue entries' classes; -1 = unlabelled or an empty slot.
    """
    B, K = keep_mask.shape
    if query_labels.shape != (B,) or queue_labels.shape != (K,):
        raise ValueError(f"keep_mask {tuple(keep_mask.shape)} needs query_labels ({B},) and queue_labels ({K},), "
                         f"got {tuple(query_labels.shape)} and {tuple(queue_labels.shape)}")
    keep = keep_mask != 0
    labelled = (query_labels >= 0)[:, None] & (queue_labels >= 0)[None, :]
    same = query_labels[:, None] == queue_labels[None, :]
    false_neg = labelled & same
    true_neg = labelled & ~same
    return {
        "pairs": labelled.sum(),
        "false_negatives": false_neg.sum(),
        "true_negatives": true_neg.sum(),
        "dropped": (labelled & ~keep).sum(),
        "dropped_false_negatives": (false_neg & ~keep).sum(),
        "kept_true_negatives": (true_neg & keep).sum(),
    }


def selection_quality(counts: Mapping[str, int | Tensor]) -> dict[str, float]:
    """Ratios of (summed) counts: ``precision``, ``recall``, ``kept_true_negatives``, ``false_negative_rate``.

    A ratio whose denominator is 0 (nothing dropped, no false negative in the queue, ...) is undefined and
    *omitted* from the result, not reported as NaN: a logged metric is always a number in [0, 1].
    """
    c = {name: int(counts[name]) for name in COUNT_NAMES}
    ratios = {
        "precision": (c["dropped_false_negatives"], c["dropped"]),
        "recall": (c["dropped_false_negatives"], c["false_negatives"]),
        "kept_true_negatives": (c["kept_true_negatives"], c["true_negatives"]),
        "false_negative_rate": (c["false_negatives"], c["pairs"]),
    }
    return {name: num / den for name, (num, den) in ratios.items() if den > 0}


def selection_metrics(counts: Tensor) -> dict[str, float]:
    """Metrics of an epoch from its summed ``(L, len(COUNT_NAMES))`` counts (one row per ICSC level).

    ``selection/precision_l{l}``, ``selection/recall_l{l}``, ``selection/kept_true_negatives_l{l}`` and
    ``selection/false_negative_rate`` (the same at every level: the pairs do not depend on the level; taken
    from level 0). Undefined ratios are omitted (see :func:`selection_quality`).
    """
    rows = counts.cpu().tolist()  # one host sync
    out: dict[str, float] = {}
    for level, row in enumerate(rows):
        q = selection_quality(dict(zip(COUNT_NAMES, row)))
        if level == 0 and "false_negative_rate" in q:
            out["selection/false_negative_rate"] = q["false_negative_rate"]
        for name in ("precision", "recall", "kept_true_negatives"):
            if name in q:
                out[f"selection/{name}_l{level}"] = q[name]
    return out


class SelectionCounter:
    """Sums :func:`selection_counts` of every ICSC level over the steps of an epoch, on the labels' device.

    Args:
        labels_by_id: ``(N,)`` long, the finest class of every dataset id (-1: unlabelled), on the device
            the masks live on.
        num_levels: ICSC levels per step; :meth:`add` raises on any other number of masks.

    ``counts`` is the ``(num_levels, len(COUNT_NAMES))`` int64 sum; reduce it over ranks (a sum) before
    :func:`selection_metrics`.
    """

    def __init__(self, labels_by_id: Tensor, num_levels: int) -> None:
        if labels_by_id.dim() != 1:
            raise ValueError(f"labels_by_id must be (N,) finest classes, got shape {tuple(labels_by_id.shape)}")
        self.labels_by_id = labels_by_id.long()
        self.counts = torch.zeros(num_levels, len(COUNT_NAMES), dtype=torch.long, device=labels_by_id.device)

    @torch.no_grad()
    def add(self, masks: Sequence[Tensor], ids: Tensor, queue_ids: Tensor) -> None:
        """Count one step: ``masks`` (one ``(B, K)`` keep mask per level) of the queries ``ids`` (B,) against the
        queue holding ``queue_ids`` (K,) *when the masks were drawn* (before this step's enqueue)."""
        if len(masks) != self.counts.shape[0]:
            raise ValueError(f"SelectionCounter expects {self.counts.shape[0]} ICSC masks per step, got {len(masks)} "
                             "(no masks: warm-up, instance selection off, or not an HCSC objective)")
        labels = self.labels_by_id
        query_labels = labels[ids.to(labels.device)]
        queue_ids = queue_ids.to(labels.device)
        queue_labels = torch.where(queue_ids >= 0, labels[queue_ids.clamp_min(0)], torch.full_like(queue_ids, -1))
        for level, mask in enumerate(masks):
            c = selection_counts(mask, query_labels, queue_labels)
            self.counts[level] += torch.stack([c[name] for name in COUNT_NAMES])
