"""PNG plots of a run: cluster sizes, learning curves, AMI per label level, negative-selection quality, sweep
results, image grids.

Every function draws on its own :class:`~matplotlib.figure.Figure` with the Agg canvas (no pyplot, no
global state, safe in Ray workers and threads), writes a PNG to ``path`` (parents created, written to a
temporary sibling and renamed, so a reader never sees half a file) and returns the path as a string.
Missing data never raises: an empty history or a metric absent everywhere gives a figure saying so.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hierclr.clustering.prototypes import Prototypes
from hierclr.viz.tree import member_counts

__all__ = ["ami_curves", "cluster_size_histograms", "image_grid", "learning_curves", "metric_vs_params",
           "selection_quality_curves"]

PathLike = str | os.PathLike
_DPI = 100
_FAILED = ("ERROR", "FAILED")  # trial statuses (Tune's, hierclr sweep's) drawn as failed even with a metric
_PAIR = re.compile(r"^prototypes/ami/proto(\d+)_label(\d+)$")
_LABEL = re.compile(r"^prototypes/ami/label(\d+)$")
_SELECTION = re.compile(r"^selection/(precision|recall|kept_true_negatives)_l(\d+)$")


# ------------------------------------------------------------------------------------------ prototypes
def cluster_size_histograms(protos: Prototypes, path: PathLike, *, title: str | None = None) -> str:
    """One histogram per level of the members per prototype; empty clusters and min/median/max annotated.

    The y axis is logarithmic when the bin counts span more than a decade (a few giant clusters beside
    thousands of small ones is the failure this plot is for).
    """
    L = protos.num_levels
    fig = _figure(4.0 * L, 3.4)
    for l, ax in enumerate(fig.subplots(1, L, squeeze=False)[0]):
        sizes = member_counts(protos, l).numpy()
        counts, _, _ = ax.hist(sizes, bins=min(50, max(1, len(np.unique(sizes)))), color="tab:blue")
        nonzero = counts[counts > 0]
        if nonzero.size and nonzero.max() / nonzero.min() > 10:
            ax.set_yscale("log")
        ax.set_title(f"level {l} · {protos.sizes[l]} prototypes", fontsize=10)
        ax.set_xlabel("members per prototype")
        ax.set_ylabel("prototypes")
        empty = int((sizes == 0).sum())
        ax.text(0.97, 0.95, f"empty: {empty}\nmin {sizes.min()} · median {np.median(sizes):g} · max {sizes.max()}",
                transform=ax.transAxes, ha="right", va="top", fontsize=8,
                color="tab:red" if empty else "black", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    epoch = "" if protos.epoch is None else f"epoch {protos.epoch}"
    fig.suptitle(" · ".join(x for x in (title, epoch) if x) or "cluster sizes", fontsize=11)
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- history
def learning_curves(history: Sequence[Mapping[str, Any]], path: PathLike, *, keys: Sequence[str] | None = None) -> str:
    """Metrics versus epoch, one subplot per group (the key's prefix before ``/``: losses together, kNN, lr).

    Default keys: ``loss/total``, every other ``loss/*`` key, ``knn/top1_best`` and ``lr``. A metric absent
    (or ``None``/NaN) in some rows is plotted at the epochs where it is present; rows without ``epoch``
    use their position.
    """
    if keys is None:
        losses = sorted({k for row in history for k in row if k.startswith("loss/") and k != "loss/total"})
        keys = ["loss/total", *losses, "knn/top1_best", "lr"]
    series = {k: s for k in keys if (s := _series(history, k))[0]}
    groups: dict[str, list[str]] = {}
    for k in series:
        groups.setdefault(k.split("/", 1)[0], []).append(k)
    if not groups:
        return _no_data(path, "learning curves: no data" + (f" for {', '.join(keys)}" if keys else ""))
    fig = _figure(4.2 * len(groups), 3.4)
    for ax, (group, members) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups.items()):
        for k in members:
            x, y = series[k]
            ax.plot(x, y, marker="o" if len(x) <= 30 else None, ms=3, lw=1.2, label=k)
        ax.set_title(group, fontsize=10)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend(fontsize=7)
    fig.suptitle("learning curves", fontsize=11)
    return _save(fig, path)


def ami_curves(history: Sequence[Mapping[str, Any]], path: PathLike) -> str:
    """``prototypes/ami/label{m}`` (HCSC Table 11's number per label level) versus epoch, bold; the full
    ``prototypes/ami/proto{l}_label{m}`` matrix as faint lines in the colour of their label level."""
    keys = sorted({k for row in history for k in row if _PAIR.match(k) or _LABEL.match(k)})
    series = {k: s for k in keys if (s := _series(history, k))[0]}
    if not series:
        return _no_data(path, "AMI: no prototypes/ami/* metrics in the history")
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    colours = [f"C{i}" for i in range(10)]
    for k, (x, y) in series.items():
        if pair := _PAIR.match(k):
            l, m = int(pair.group(1)), int(pair.group(2))
            ax.plot(x, y, color=colours[m % 10], alpha=0.3, lw=0.9, ls=("-", "--", ":", "-.")[l % 4],
                    label=f"proto {l} × label {m}")
    for k, (x, y) in series.items():
        if label := _LABEL.match(k):
            m = int(label.group(1))
            ax.plot(x, y, color=colours[m % 10], lw=2.2, marker="o" if len(x) <= 30 else None, ms=4,
                    label=f"label level {m} (Table 11)")
    _epoch_axis(ax)
    ax.set_ylabel("adjusted mutual information")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("prototypes vs label hierarchy (level 0 = finest)", fontsize=10)
    return _save(fig, path)


def selection_quality_curves(history: Sequence[Mapping[str, Any]], path: PathLike) -> str:
    """HCSC Fig. 5 from a run's history: left, ``selection/precision_l{l}`` (solid) and ``selection/recall_l{l}``
    (dashed) of the dropped false negatives per ICSC level, with ``selection/false_negative_rate`` (grey, dotted:
    the precision of dropping at random); right, ``selection/kept_true_negatives_l{l}``."""
    keys = {k for row in history for k in row if _SELECTION.match(k)}
    series = {k: s for k in sorted(keys, key=lambda k: (int(_SELECTION.match(k).group(2)), k))
              if (s := _series(history, k))[0]}
    if not series:
        return _no_data(path, "negative-selection quality: no selection/* metrics in the history")
    fig = _figure(10.0, 4.0)
    dropped, kept = fig.subplots(1, 2)
    styles = {"precision": "-", "recall": "--"}
    for k, (x, y) in series.items():
        name, level = _SELECTION.match(k).groups()
        ax = kept if name == "kept_true_negatives" else dropped
        ax.plot(x, y, color=f"C{int(level) % 10}", ls=styles.get(name, "-"), lw=1.6,
                marker="o" if len(x) <= 30 else None, ms=3, label=f"{name.replace('_', ' ')}, level {level}")
    x, y = _series(history, "selection/false_negative_rate")
    if x:
        dropped.plot(x, y, color="grey", ls=":", lw=1.4, label="false negatives in the queue (baseline)")
    dropped.set_title("false negatives dropped: precision (solid), recall (dashed)", fontsize=10)
    kept.set_title("true negatives kept", fontsize=10)
    for ax in (dropped, kept):
        _epoch_axis(ax)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("ICSC negative selection against the labels (HCSC Fig. 5; level 0 = finest prototypes)",
                 fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- sweep
def metric_vs_params(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    params: Sequence[str],
    path: PathLike,
    *,
    mode: Literal["max", "min"] = "max",
) -> str:
    """A sweep's ``metric`` against each of its ``params``, one subplot per parameter.

    ``rows`` are trials: ``{"trial", "status", "params": {dotted_name: value}, metric: float | None}``.
    Numeric parameters are scattered (log x when all are positive and span more than a decade); any
    other value (lists such as ``[1000, 500, 200]``, strings, bools) is a category, ticked with its text.
    Failed trials (status ``ERROR`` or ``FAILED``) and trials without a finite metric are hollow grey markers along
    the bottom; the best of the others (by ``mode``) is a red star. A trial without the parameter is
    left out of that subplot (counted in its title).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not rows or not params:
        return _no_data(path, f"{metric}: no trials" if not rows else f"{metric}: no parameters to plot")
    scores = [_finite(r.get(metric)) for r in rows]
    ok = [s is not None and str(r.get("status", "")).upper() not in _FAILED for r, s in zip(rows, scores)]
    good = [s for s, o in zip(scores, ok) if o]
    best = None
    if good:
        target = max(good) if mode == "max" else min(good)
        best = next(i for i, (s, o) in enumerate(zip(scores, ok)) if o and s == target)
    span = (max(good) - min(good)) if good else 1.0
    floor = (min(good) - 0.08 * (span or 1.0)) if good else 0.0
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig = _figure(4.4 * ncols, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(rows))
    for ax, name in zip(axes, params):
        values = [_param(r, name) for r in rows]
        present = [i for i, v in enumerate(values) if v is not _MISSING]
        x, ticks = _positions([values[i] for i in present], ax)
        xs = {i: xi + (jitter[i] if ticks else 0.0) for i, xi in zip(present, x)}  # categories: spread a strip
        for i in present:
            if ok[i]:
                ax.scatter(xs[i], scores[i], s=28, color="tab:blue", alpha=0.8, zorder=2)
            else:
                ax.scatter(xs[i], floor, s=28, facecolors="none", edgecolors="grey", zorder=2)
        if best is not None and best in xs:
            ax.scatter(xs[best], scores[best], s=160, marker="*", color="tab:red", zorder=3,
                       label=f"best: {rows[best].get('trial', best)}")
            ax.legend(fontsize=7, loc="lower right")
        dropped = len(rows) - len(present)
        ax.set_title(name + (f" ({dropped} trial(s) without it)" if dropped else ""), fontsize=9)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if not present:
            ax.text(0.5, 0.5, "no trial sets this parameter", transform=ax.transAxes, ha="center", va="center")
    for ax in axes[len(params):]:
        ax.set_visible(False)
    failed = len(rows) - sum(ok)
    head = f"{metric} ({mode}) over {len(rows)} trials"
    if best is not None:
        head += f" · best {rows[best].get('trial', best)} = {scores[best]:.4g}"
    if failed:
        head += f" · {failed} failed / without {metric} (hollow, at the bottom)"
    fig.suptitle(head, fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- images
def image_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: PathLike, *, title: str | None = None) -> str:
    """Rows of images, each with its label above it (e.g. a prototype chain, finest level at the top).

    Images are ``(H, W, 3)`` uint8 (``(H, W)`` grey is accepted); rows may hold different numbers of images
    and an empty row says so.
    """
    if not rows:
        return _no_data(path, title or "no images")
    ncols = max(1, max(len(images) for _, images in rows))
    cell = 1.15
    fig = _figure(max(4.5, cell * ncols), (cell + 0.3) * len(rows) + (0.4 if title else 0.1))
    for r, (sub, (label, images)) in enumerate(zip(fig.subfigures(len(rows), 1, squeeze=False)[:, 0], rows)):
        sub.suptitle(label, x=0.005, ha="left", fontsize=8)  # one label per row, not per cell: columns stay even
        for c, ax in enumerate(sub.subplots(1, ncols, squeeze=False)[0]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                img = _check_image(images[c], r, c)
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            elif c == 0:
                ax.axis("off")
                ax.text(0.0, 0.5, "(no images)", transform=ax.transAxes, fontsize=8)
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- helpers
_MISSING = object()


def _epoch_axis(ax: Axes) -> None:
    """An x axis of epochs: ticks on whole epochs only."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> str:
    """Write the PNG next to ``path`` under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.png")
    try:
        fig.savefig(tmp, format="png", dpi=_DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)


def _no_data(path: PathLike, message: str) -> str:
    fig = _figure(5.0, 3.0)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10)
    return _save(fig, path)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(epochs, values)`` of the rows where ``key`` holds a finite number."""
    xs, ys = [], []
    for i, row in enumerate(history):
        y = _finite(row.get(key))
        if y is not None:
            x = _finite(row.get("epoch"))
            xs.append(float(i) if x is None else x)
            ys.append(y)
    return xs, ys


def _param(row: Mapping[str, Any], name: str) -> Any:
    """``row["params"][name]`` for a dotted name, also found in nested dicts; ``_MISSING`` when absent."""
    params = row.get("params") or {}
    if name in params:
        return params[name]
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _positions(values: list[Any], ax: Axes) -> tuple[list[float], list[str]]:
    """x positions of the values on ``ax``: numbers as they are (log axis when it helps), anything else as
    sorted categories (returned as tick labels; empty for a numeric axis)."""
    if values and all(_finite(v) is not None for v in values):
        x = [float(v) for v in values]
        if min(x) > 0 and max(x) / min(x) > 10:
            ax.set_xscale("log")
        return x, []
    text = [_category(v) for v in values]
    ticks = sorted(set(text))
    index = {t: i for i, t in enumerate(ticks)}
    ax.set_xticks(range(len(ticks)), ticks, rotation=20 if max(map(len, ticks), default=0) > 8 else 0, fontsize=7)
    ax.set_xlim(-0.6, len(ticks) - 0.4)
    return [float(index[t]) for t in text], ticks


def _category(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _check_image(img: np.ndarray, r: int, c: int) -> np.ndarray:
    arr = np.asarray(img)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"image_grid: image {c} of row {r} has shape {arr.shape}, expected (H, W, 3) or (H, W)")
    if arr.dtype != np.uint8:
        raise ValueError(f"image_grid: image {c} of row {r} is {arr.dtype}, expected uint8")
    return arr
