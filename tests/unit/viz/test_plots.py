"""Every plot writes a real PNG, edge cases included (empty history, absent keys, categorical and failed trials)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hierclr.clustering.prototypes import Prototypes, compose_assignments
from hierclr.viz.plots import (
    ami_curves,
    cluster_size_histograms,
    image_grid,
    learning_curves,
    metric_vs_params,
    selection_quality_curves,
)


def assert_png(path, written) -> None:
    assert written == str(path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left over


def _protos(rng) -> Prototypes:
    sizes = (40, 10, 3)
    parents = (torch.as_tensor(rng.integers(0, 10, 40)), torch.as_tensor(rng.integers(0, 3, 10)))
    level0 = torch.as_tensor(rng.zipf(1.6, 2000) % 35)  # skewed sizes, prototypes 35..39 empty
    return Prototypes(centroids=tuple(torch.randn(m, 4) for m in sizes), parents=parents,
                      phi=tuple(torch.rand(m) for m in sizes), assignments=compose_assignments(level0, parents),
                      epoch=3)


def _history():
    rows = []
    for e in range(12):
        row = {"epoch": e, "lr": 0.03 * (1 - e / 12), "train/images_per_s": 900.0 + e}
        if e >= 2:  # losses absent during warm-up
            row.update({"loss/total": 5 - 0.2 * e, "loss/instance": 4 - 0.1 * e, "loss/proto": 1 - 0.05 * e})
        if e % 4 == 3:  # kNN and AMI only every few epochs
            row.update({"knn/top1_best": 0.3 + 0.02 * e, "prototypes/ami/label0": 0.4 + 0.01 * e, "prototypes/ami/label1": 0.3 + 0.01 * e})
            row.update({f"prototypes/ami/proto{l}_label{m}": 0.2 + 0.01 * (e + l + m) for l in range(3) for m in range(2)})
        rows.append(row)
    rows[5]["loss/total"] = None  # a missing value inside a series
    return rows


def test_cluster_size_histograms(tmp_path, rng):
    protos = _protos(rng)
    assert_png(tmp_path / "sizes.png", cluster_size_histograms(protos, tmp_path / "sizes.png", title="run x"))
    one = protos.truncate(1)
    assert_png(tmp_path / "a" / "one.png", cluster_size_histograms(one, tmp_path / "a" / "one.png"))


def test_titles_name_the_epoch_once_and_epoch_axes_tick_whole_epochs(tmp_path, rng, monkeypatch):
    from hierclr.runtime import artifacts
    from hierclr.viz import plots

    figs, real = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or real(fig, path))

    class Tracker:
        enabled = True

        def log_dict(self, *a):
            pass

        def log_artifact(self, *a):
            pass

    protos = _protos(rng)
    artifacts.log_hierarchy(Tracker(), protos, "hierarchy/epoch_003")  # what every E-step logs
    title = figs[-1]._suptitle.get_text()
    assert title == f"cluster sizes · epoch {protos.epoch}" and title.count("epoch") == 1
    rows = [{"epoch": e, "prototypes/ami/label0": 0.1 * e, "loss/total": 1.0 / (e + 1)} for e in (1, 2, 3)]
    ami_curves(rows, tmp_path / "ami.png")
    learning_curves(rows, tmp_path / "lc.png")
    for fig in figs[-2:]:
        for ax in fig.axes:
            if ax.get_xlabel() == "epoch":
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_learning_curves(tmp_path):
    assert_png(tmp_path / "lc.png", learning_curves(_history(), tmp_path / "lc.png"))
    assert_png(tmp_path / "sel.png", learning_curves(_history(), tmp_path / "sel.png", keys=["train/images_per_s"]))
    assert_png(tmp_path / "empty.png", learning_curves([], tmp_path / "empty.png"))
    assert_png(tmp_path / "absent.png", learning_curves(_history(), tmp_path / "absent.png", keys=["nope/x"]))
    assert_png(tmp_path / "noepoch.png", learning_curves([{"loss/total": 1.0}, {"loss/total": 0.5}],
                                                         tmp_path / "noepoch.png"))


def test_ami_curves(tmp_path):
    assert_png(tmp_path / "ami.png", ami_curves(_history(), tmp_path / "ami.png"))
    assert_png(tmp_path / "none.png", ami_curves([{"epoch": 0, "lr": 0.1}], tmp_path / "none.png"))
    assert_png(tmp_path / "empty.png", ami_curves([], tmp_path / "empty.png"))


def test_selection_quality_curves(tmp_path):
    rows = [{"epoch": e, "lr": 0.1} for e in range(6)]
    for e, row in enumerate(rows[2:], start=2):  # selection only after warm-up
        row["selection/false_negative_rate"] = 0.1
        for level in range(3):
            row.update({f"selection/precision_l{level}": 0.2 + 0.05 * e, f"selection/recall_l{level}": 0.1 * e,
                        f"selection/kept_true_negatives_l{level}": 0.95})
    del rows[3]["selection/precision_l1"]  # omitted: nothing dropped at that level in that epoch
    assert_png(tmp_path / "sel.png", selection_quality_curves(rows, tmp_path / "sel.png"))
    assert_png(tmp_path / "none.png", selection_quality_curves([{"epoch": 0}], tmp_path / "none.png"))
    assert_png(tmp_path / "empty.png", selection_quality_curves([], tmp_path / "empty.png"))


def test_log_curves_adds_the_selection_plot_only_with_selection_metrics(tmp_path):
    from hierclr.runtime.artifacts import log_curves

    class Tracker:  # what log_curves needs of hierclr.runtime.tracking.Tracker
        enabled = True

        def __init__(self):
            self.logged: list[str] = []

        def log_artifact(self, local, folder):
            self.logged += [f"{folder}/{p.name}" for p in sorted(Path(local).iterdir())]

    plain, with_sel = Tracker(), Tracker()
    log_curves(plain, [{"epoch": 0, "loss/total": 1.0}])
    log_curves(with_sel, [{"epoch": 0, "loss/total": 1.0}, {"epoch": 1, "selection/precision_l0": 0.3}])
    assert plain.logged == ["plots/learning_curves.png"]
    assert with_sel.logged == ["plots/learning_curves.png", "plots/selection_quality.png"]


def _trials():
    rows = []
    for i, (lr, protos, cos, acc) in enumerate([(0.01, [1000, 500, 200], True, 0.61), (0.03, [3000, 2000, 1000], False,
                                                 0.66), (0.3, [1000, 500, 200], True, 0.58), (0.1, [6000], False, None)]):
        rows.append({"trial": f"t{i}", "status": "TERMINATED" if acc is not None else "ERROR",
                     "params": {"optim.lr": lr, "clustering.num_prototypes": protos, "optim.cosine": cos,
                                "model.arch": "resnet18"}, "knn/top1": acc})
    rows.append({"trial": "t4", "status": "ERROR", "params": {"optim.lr": 0.05}, "knn/top1": 0.9})  # failed late
    return rows


def test_metric_vs_params(tmp_path):
    params = ["optim.lr", "clustering.num_prototypes", "optim.cosine", "model.arch"]
    assert_png(tmp_path / "max.png", metric_vs_params(_trials(), "knn/top1", params, tmp_path / "max.png"))
    assert_png(tmp_path / "min.png", metric_vs_params(_trials(), "knn/top1", params[:1], tmp_path / "min.png",
                                                      mode="min"))
    failed = [dict(r, status="ERROR") for r in _trials()]  # nothing to mark best
    assert_png(tmp_path / "failed.png", metric_vs_params(failed, "knn/top1", params, tmp_path / "failed.png"))
    nested = [{"trial": 0, "status": "TERMINATED", "params": {"optim": {"lr": 0.1}}, "acc": 0.5}]
    assert_png(tmp_path / "nested.png", metric_vs_params(nested, "acc", ["optim.lr", "not.there"],
                                                         tmp_path / "nested.png"))
    assert_png(tmp_path / "none.png", metric_vs_params([], "acc", ["optim.lr"], tmp_path / "none.png"))
    with pytest.raises(ValueError, match="mode"):
        metric_vs_params(_trials(), "knn/top1", params, tmp_path / "x.png", mode="best")


def test_image_grid(tmp_path, rng):
    rows = [("level 0 · prototype 3", [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]),
            ("level 1 · prototype 1", [rng.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(8)]),
            ("grey", [rng.integers(0, 256, (16, 16), dtype=np.uint8)]), ("empty", [])]
    assert_png(tmp_path / "grid.png", image_grid(rows, tmp_path / "grid.png", title="chain"))
    assert_png(tmp_path / "nothing.png", image_grid([], tmp_path / "nothing.png"))
    with pytest.raises(ValueError, match="image 0 of row 0"):
        image_grid([("bad", [np.zeros((4, 4, 3), np.float32)])], tmp_path / "bad.png")


def test_plots_from_threads(tmp_path):
    """No pyplot state: figures drawn concurrently in threads (as in Ray workers) all come out."""
    errors = []

    def draw(k):
        try:
            learning_curves(_history(), tmp_path / f"t{k}.png")
        except Exception as e:  # noqa: BLE001  collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=draw, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k in range(2):
        assert_png(tmp_path / f"t{k}.png", str(tmp_path / f"t{k}.png"))
