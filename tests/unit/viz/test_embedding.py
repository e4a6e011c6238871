"""t-SNE / PCA maps of features: one or two panels, deterministic for a seed, subsampled, checked inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import planted_hierarchy
from matplotlib.figure import Figure

from hierclr.viz import embedding_plot


def planted_points() -> tuple[np.ndarray, np.ndarray]:
    """240 points, 32-d: 12 classes (labels[:, 0]) in 4 coarse classes (labels[:, 2])."""
    return planted_hierarchy(np.random.default_rng(0), branching=(4, 3, 1), per_leaf=20, dim=32)


def _offsets(fig: Figure) -> list[np.ndarray]:
    return [np.asarray(ax.collections[0].get_offsets()) for ax in fig.axes if ax.collections]


def test_one_panel_by_class_and_a_png(tmp_path):
    x, labels = planted_points()
    fig = embedding_plot(x, labels[:, 0], class_names=[f"class {i}" for i in range(12)])
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    (xy,) = _offsets(fig)
    assert xy.shape == (len(x), 2) and np.isfinite(xy).all()
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()][:2] == ["class 0", "class 1"]
    fig.savefig(tmp_path / "tsne.png")  # the Agg canvas is attached: no pyplot needed
    assert (tmp_path / "tsne.png").stat().st_size > 1000


def test_two_panels_with_coarse_labels_and_torch_input():
    x, labels = planted_points()
    fig = embedding_plot(torch.from_numpy(x), torch.from_numpy(labels[:, 0]), coarse_labels=labels[:, 2],
                         coarse_names=["animals", "plants", "rocks", "sky"])
    assert len(fig.axes) == 2
    fine, coarse = _offsets(fig)
    np.testing.assert_array_equal(fine, coarse)  # the same map, coloured twice
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["animals", "plants", "rocks", "sky"]
    # the points of one coarse class share one colour
    colours = fig.axes[1].collections[0].get_facecolors()
    for c in range(4):
        assert len(np.unique(colours[labels[:, 2] == c], axis=0)) == 1


def test_deterministic_for_a_seed():
    x, labels = planted_points()
    a = _offsets(embedding_plot(x, labels[:, 0], seed=3))[0]
    b = _offsets(embedding_plot(x, labels[:, 0], seed=3))[0]
    np.testing.assert_allclose(a, b)
    c = _offsets(embedding_plot(x, labels[:, 0], seed=4, max_points=100))[0]
    d = _offsets(embedding_plot(x, labels[:, 0], seed=4, max_points=100))[0]
    np.testing.assert_allclose(c, d)


def test_subsamples_more_than_max_points():
    x, labels = planted_points()
    fig = embedding_plot(x, labels[:, 0], coarse_labels=labels[:, 2], max_points=50, method="pca")
    assert [o.shape for o in _offsets(fig)] == [(50, 2), (50, 2)]
    assert f"50 of {len(x)} points" in fig.get_suptitle()
    many = np.random.default_rng(0).integers(0, 40, len(x))  # > 20 classes: colours only, no legend
    assert embedding_plot(x, many, method="pca").axes[0].get_legend() is None


def test_rejects_bad_inputs():
    x, labels = planted_points()
    with pytest.raises(ValueError, match="labels has 10 entries but features has"):
        embedding_plot(x, labels[:10, 0])
    with pytest.raises(ValueError, match="coarse_labels has 3 entries"):
        embedding_plot(x, labels[:, 0], coarse_labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"features must be \(N, d\)"):
        embedding_plot(x[:, 0], labels[:, 0])
    with pytest.raises(ValueError, match="method must be"):
        embedding_plot(x, labels[:, 0], method="umap")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embedding_plot(bad, labels[:, 0])


def test_evaluate_names_the_coarse_classes_in_the_legend(tmp_path):
    """hierclr evaluate's t-SNE: the coarse panel's legend says the hierarchy's names (digits: loopy / straight /
    curvy), not 0 / 1 / 2."""
    from hierclr.data.builtin import materialize_builtin
    from hierclr.data.source import open_source
    from hierclr.runtime.evaluate import coarse_classes

    src = open_source(materialize_builtin("builtin://digits/val", tmp_path))
    y = np.repeat(np.arange(10), 12)
    coarse, names = coarse_classes(y, src.level_map(), src)
    assert names == ["loopy", "straight", "curvy"] and np.array_equal(coarse, src.level_map()[y, -1])
    x = np.random.default_rng(0).normal(size=(len(y), 8)) + y[:, None]
    fig = embedding_plot(x, y, coarse_labels=coarse, coarse_names=names, method="pca")
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == names
    flat = open_source(materialize_builtin("builtin://digits/val", tmp_path))
    assert coarse_classes(y, flat.level_map()[:, :1], flat) == (None, None)  # one level: no coarse panel
