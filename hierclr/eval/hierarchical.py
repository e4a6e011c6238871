"""Per-level accuracy and the hierarchical violation rate (HVR) of hierarchical predictions.

HCAL (arXiv 2508.13452) reports level-wise accuracy together with the HVR: the fraction of samples
whose predicted labels, read from the finest level to the coarsest, contain at least one adjacent pair
that is not a parent-child edge of the label hierarchy. The paper's claim is higher accuracy *and*
lower HVR, so :func:`hierarchy_metrics` returns both.

Levels follow hierclr's convention (:mod:`hierclr.labels.hierarchy`): level 0 is the finest level (the
dataset's classes), levels ``1 .. L-1`` successively coarser. The paper numbers levels from 1 = finest:
paper level ``k`` is our level ``k - 1``, and the paper's pair ``(k, k+1)`` is our ``(k-1, k)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["hierarchical_violation_rate", "hierarchy_metrics", "level_accuracy", "parent_tables"]


def parent_tables(level_map: np.ndarray | torch.Tensor) -> list[np.ndarray]:
    """Parent of every class one level up, from a ``level_map``.

    Args:
        level_map: ``(C0, L)`` integers, row ``c`` = fine class ``c``'s class at every level (column 0
            is ``c`` itself; :meth:`LabelHierarchy.labels_at_all_levels` of ``arange(C0)``). Every entry
            must be ``>= 0``.

    Returns:
        ``L - 1`` int64 arrays; ``parents[l][j]`` is the class at level ``l + 1`` of class ``j`` of level
        ``l``. ``parents[l]`` has ``level_map[:, l].max() + 1`` entries; a class index below that which
        no fine class reaches (a gap in the numbering) has parent ``-1``, so predicting it always counts
        as a violation. ``[]`` for a one-level map.

    Raises:
        ValueError: not a 2-D integer array, a negative entry, or a class with two parents (the map is
            not a tree); the message names the level, the class and both parents.
    """
    lm = _as_int_2d(level_map, "level_map")
    if lm.size and int(lm.min()) < 0:
        r, level = np.argwhere(lm < 0)[0]
        raise ValueError(f"level_map[{r}, {level}] = {lm[r, level]}: every fine class needs a class at every level")
    tables = []
    for level in range(lm.shape[1] - 1):
        child, parent = lm[:, level], lm[:, level + 1]
        size = int(child.max()) + 1 if child.size else 0
        table = np.full(size, -1, dtype=np.int64)
        table[child] = parent
        clash = np.flatnonzero(table[child] != parent)
        if clash.size:
            r = clash[0]
            j = int(child[r])
            other = int(np.flatnonzero((child == j) & (parent == table[j]))[0])
            raise ValueError(
                f"level_map is not a tree: class {j} of level {level} has two parents at level {level + 1}: "
                f"{int(table[j])} (fine class {other}) and {int(parent[r])} (fine class {int(r)})"
            )
        tables.append(table)
    return tables


def level_accuracy(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> np.ndarray:
    """Accuracy at every level.

    Args:
        pred: ``(N, L)`` predicted class per level.
        true: ``(N, L)`` true class per level; an entry ``< 0`` (unlabelled at that level) leaves that
            row out of that level's accuracy.

    Returns:
        ``(L,)`` float64; ``nan`` at a level with no labelled row (also when ``N = 0``).
    """
    p = _as_int_2d(pred, "pred")
    t = _as_int_2d(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {p.shape} but true has shape {t.shape}")
    valid = t >= 0
    hits = ((p == t) & valid).sum(axis=0)
    counts = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan).astype(np.float64)


def hierarchical_violation_rate(
    pred: np.ndarray | torch.Tensor, parents: Sequence[np.ndarray | torch.Tensor]
) -> tuple[float, np.ndarray]:
    """HVR: fraction of samples with at least one predicted pair ``(l, l+1)`` that is not a tree edge.

    Pair ``(l, l+1)`` of sample ``i`` is violated when ``parents[l][pred[i, l]] != pred[i, l+1]``.

    Args:
        pred: ``(N, L)`` predicted class per level, every entry in ``[0, len(parents[l]))`` at level
            ``l < L - 1`` (the coarsest level is only compared, never looked up).
        parents: ``L - 1`` parent tables, from :func:`parent_tables`.

    Returns:
        ``(hvr, per_pair)``: ``per_pair`` is ``(L-1,)`` float64, the violation rate of each adjacent pair
        alone. With ``N = 0`` the rates are ``0.0`` and ``zeros(L-1)``; with ``L = 1`` there is no pair:
        ``0.0`` and an empty array.

    Raises:
        ValueError: ``len(parents) != L - 1``, or a prediction outside its parent table.
    """
    p = _as_int_2d(pred, "pred")
    n, num_levels = p.shape
    if len(parents) != num_levels - 1:
        raise ValueError(f"{num_levels} predicted levels need {num_levels - 1} parent tables, got {len(parents)}")
    if num_levels == 1:
        return 0.0, np.zeros(0, dtype=np.float64)
    if n == 0:
        return 0.0, np.zeros(num_levels - 1, dtype=np.float64)
    violated = np.zeros((n, num_levels - 1), dtype=bool)
    for level, table in enumerate(parents):
        table = np.asarray(table.detach().cpu() if isinstance(table, torch.Tensor) else table, dtype=np.int64)
        col = p[:, level]
        bad = (col < 0) | (col >= table.shape[0])
        if bad.any():
            raise ValueError(f"predicted class {int(col[np.argmax(bad)])} at level {level} is outside the parent "
                             f"table (classes 0..{table.shape[0] - 1})")
        violated[:, level] = table[col] != p[:, level + 1]
    return float(violated.any(axis=1).mean()), violated.mean(axis=0).astype(np.float64)


def hierarchy_metrics(
    pred: np.ndarray | torch.Tensor,
    true: np.ndarray | torch.Tensor,
    parents: Sequence[np.ndarray | torch.Tensor],
) -> dict[str, float]:
    """Per-level accuracy and HVR in one dict, for logging.

    Returns:
        ``acc/level{l}`` for every level (``nan`` where no row is labelled), ``hvr``, and
        ``hvr/level{l}-{l+1}`` for every adjacent pair.
    """
    acc = level_accuracy(pred, true)
    hvr, per_pair = hierarchical_violation_rate(pred, parents)
    out = {f"acc/level{l}": float(a) for l, a in enumerate(acc)}
    out["hvr"] = hvr
    out.update({f"hvr/level{l}-{l + 1}": float(r) for l, r in enumerate(per_pair)})
    return out


def _as_int_2d(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an (N, L) integer array, got dtype {arr.dtype} shape {arr.shape}")
    return arr.astype(np.int64, copy=False)
