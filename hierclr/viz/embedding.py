"""2-D map of learned features: t-SNE (or PCA) of the trunk features, coloured by class and by coarse class.

Like :mod:`hierclr.viz.plots`, the figure is a :class:`~matplotlib.figure.Figure` with the Agg canvas (no
pyplot global state: safe in Ray workers and threads); save it with ``fig.savefig(path)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hierclr.viz.plots import _figure

__all__ = ["embed_2d", "embedding_plot"]

_MAX_LEGEND = 20  # more classes than this: colours only, no legend


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def embed_2d(features: np.ndarray, *, method: Literal["tsne", "pca"] = "tsne", seed: int = 0) -> np.ndarray:
    """``(N, d)`` -> ``(N, 2)``: scikit-learn t-SNE (PCA initialisation, perplexity ``min(30, (N - 1) / 3)``)
    or a plain 2-component PCA. Deterministic for a ``seed``."""
    x = np.asarray(features, dtype=np.float32)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, learning_rate="auto", random_state=seed
                ).fit_transform(x)


def _colours(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unique labels, their RGBA colours, RGBA per point)``: tab10 / tab20, more classes on a continuous map."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    k = len(uniq)
    if k <= 10:
        palette = colormaps["tab10"](np.arange(k))
    elif k <= 20:
        palette = colormaps["tab20"](np.arange(k))
    else:
        palette = colormaps["turbo"](np.linspace(0.0, 1.0, k))
    return uniq, palette, palette[inverse]


def _name(value, names: Sequence[str] | None) -> str:
    v = int(value) if np.issubdtype(type(value), np.integer) else value
    if names is not None and isinstance(v, int) and 0 <= v < len(names):
        return str(names[v])
    return str(v)


def _panel(ax: Axes, xy: np.ndarray, labels: np.ndarray, names: Sequence[str] | None, title: str,
           size: float) -> None:
    uniq, palette, colours = _colours(labels)
    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=size, linewidths=0, alpha=0.8, rasterized=len(xy) > 2000)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({len(uniq)})", fontsize=10)
    if len(uniq) <= _MAX_LEGEND:
        handles = [Line2D([], [], ls="", marker="o", ms=5, color=c, label=_name(u, names))
                   for u, c in zip(uniq, palette)]
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def embedding_plot(
    features,
    labels,
    *,
    coarse_labels=None,
    class_names: Sequence[str] | None = None,
    coarse_names: Sequence[str] | None = None,
    method: Literal["tsne", "pca"] = "tsne",
    max_points: int = 5000,
    seed: int = 0,
) -> Figure:
    """A 2-D embedding of ``features`` ``(N, d)`` (numpy or torch) coloured by ``labels`` ``(N,)``; with
    ``coarse_labels`` ``(N,)`` a second panel of the same points coloured by coarse class.

    More than ``max_points`` points: a random subset of that size (``seed``), so t-SNE stays tractable.
    ``class_names`` / ``coarse_names`` name label ``i`` in the legend (shown up to 20 classes). The figure is
    deterministic for a ``seed``; the 2-D points are the offsets of each axes' scatter collection.
    """
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    x = _array(features)
    y = _array(labels).reshape(-1)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"features must be (N, d) with d >= 2, got shape {x.shape}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"labels has {len(y)} entries but features has {n} rows")
    coarse = None
    if coarse_labels is not None:
        coarse = _array(coarse_labels).reshape(-1)
        if len(coarse) != n:
            raise ValueError(f"coarse_labels has {len(coarse)} entries but features has {n} rows")
    if n < 3:
        raise ValueError(f"an embedding plot needs at least 3 points, got {n}")
    if max_points < 3:
        raise ValueError(f"max_points must be >= 3, got {max_points}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        x, y = x[keep], y[keep]
        coarse = None if coarse is None else coarse[keep]
    xy = embed_2d(x, method=method, seed=seed)

    panels = 1 if coarse is None else 2
    fig = _figure(5.6 * panels, 4.6)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    size = float(np.clip(3000.0 / len(xy), 2.0, 25.0))
    _panel(axes[0], xy, y, class_names, "classes", size)
    if coarse is not None:
        _panel(axes[1], xy, coarse, coarse_names, "coarse classes", size)
    shown = f"{len(xy)} of {n} points" if len(xy) < n else f"{n} points"
    fig.suptitle(f"{'t-SNE' if method == 'tsne' else 'PCA'} of {x.shape[1]}-d features · {shown}", fontsize=11)
    return fig
