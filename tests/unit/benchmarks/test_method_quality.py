"""The method-comparison benchmark (benchmarks/method_quality.py), without Ray: every profile gives every method a
valid config that differs from the others only in what makes the method (equal budget), and the numbers it
reports (last-epoch metrics, mean and spread over seeds, epoch ratios, the pixel floor) are what they claim."""
import statistics
from pathlib import Path

import numpy as np
import pytest
from helpers.benchmark_scripts import load_benchmark
from PIL import Image

from hierclr.config.pretrain import load_config


@pytest.fixture(scope="module")
def mq():
    return load_benchmark("method_quality")


def _configs(mq, profile, tmp_path):
    prof = mq.PROFILES[profile]
    base = [*prof["set"], f"data.train={tmp_path}/train", f"data.val={tmp_path}/test",
            f"checkpoint.storage_path={tmp_path}/runs", "seed=0"]
    return {name: load_config(prof["preset"], [*base, *over]) for name, over in mq.METHODS.items()}


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_every_method_gets_the_same_budget(mq, tmp_path, profile):
    cfgs = _configs(mq, profile, tmp_path)
    assert {n: c.method for n, c in cfgs.items()} == {"moco_v2": "moco", "pcl_v2": "pcl", "hcsc": "hcsc",
                                                     "hcsc_train_keys": "hcsc"}
    assert cfgs["hcsc"].clustering.features == "embed_pass"
    assert cfgs["hcsc_train_keys"].clustering.features == "train_keys"

    def shared(cfg):
        d = cfg.model_dump()
        d.pop("method")
        d["clustering"].pop("features")
        return d

    ref = shared(cfgs["moco_v2"])
    for name, cfg in cfgs.items():
        assert shared(cfg) == ref, name  # backbone, data, epochs, batch, augmentation, optimiser, seed: all equal
    assert ref["eval"]["ks"] == (20, 200)
    assert ref["pcl"]["num_clusters"] == ref["clustering"]["sizes"]  # PCL clusters at HCSC's granularities


def test_profiles_are_what_the_docstring_says(mq, tmp_path):
    cpu = _configs(mq, "cpu", tmp_path)["hcsc"]
    assert (cpu.model.backbone, cpu.model.cifar_stem, cpu.optim.epochs, cpu.loss.warmup_epochs) == \
        ("resnet10", False, 18, 2)
    assert mq.PROFILES["cpu"]["train_per_class"] == 1000 and len(mq.PROFILES["cpu"]["seeds"]) >= 2
    gpu = _configs(mq, "gpu", tmp_path)["hcsc"]
    assert (gpu.model.backbone, gpu.model.cifar_stem, gpu.optim.epochs, gpu.resources.use_gpu) == \
        ("resnet18", True, 200, True)
    assert mq.PROFILES["gpu"]["train_per_class"] is None  # the full training split


def _row(epoch, seconds, eval_s=0.0, **metrics):
    return {"epoch": epoch, "time/epoch": seconds, **({"time/eval": eval_s} if eval_s else {}), **metrics}


def test_run_summary_reads_the_last_epoch_and_the_estep_epochs(mq):
    history = [_row(0, 10.0), _row(1, 11.0),
               _row(2, 20.0, 5.0, **{"knn/top1_k20": 0.3}),
               _row(3, 17.0, **{"loss/total": 7.5}),
               _row(4, 30.0, 12.0, **{"knn/top1_k20": 0.41234, "knn/top1_k200": 0.4, "knn/top5_k20": 0.9,
                                      "prototypes/ami/label0": 0.2, "prototypes/ami/proto1_label2": 0.05,
                                      "selection/precision_l0": 0.33, "loss/total": 7.25})]
    s = mq.run_summary(history, warmup=2, seconds=99.94)
    assert s["knn"] == {"top1_k20": 0.4123, "top1_k200": 0.4}  # last epoch, top-1 only
    assert s["ami"] == {"label0": 0.2, "proto1_label2": 0.05}
    assert s["selection"] == {"precision_l0": 0.33}
    assert s["epoch_s"] == [10.0, 11.0, 15.0, 17.0, 18.0]  # evaluation time taken out
    assert s["epoch_s_median"] == 17.0  # median of 15, 17, 18 (epochs >= warm-up)
    assert s["loss_last"] == 7.25 and s["run_s"] == 99.9


def test_aggregate_mean_spread_and_ratio_to_moco(mq):
    def run(method, seed, k20, ami, epoch_s):
        return {"method": method, "seed": seed, "knn": {"top1_k20": k20}, "ami": {"label0": ami} if ami else {},
                "selection": {}, "epoch_s_median": epoch_s, "run_s": 10 * epoch_s}

    runs = [run("moco_v2", 0, 0.40, None, 20.0), run("hcsc", 0, 0.44, 0.3, 25.0),
            run("moco_v2", 1, 0.42, None, 22.0), run("hcsc", 1, 0.47, 0.1, 23.0)]
    out = mq.aggregate(runs)
    assert list(out) == ["moco_v2", "hcsc"]  # METHODS order, absent methods left out
    k = out["hcsc"]["knn"]["top1_k20"]
    assert k["mean"] == pytest.approx(0.455) and k["n"] == 2
    assert (k["min"], k["max"]) == (0.44, 0.47)
    assert k["std"] == pytest.approx(round(statistics.stdev([0.44, 0.47]), 4))  # sample std, n - 1
    assert out["hcsc"]["ami"]["label0"]["mean"] == pytest.approx(0.2)
    assert out["moco_v2"]["ami"] == {}
    assert out["hcsc"]["epoch_vs_moco_v2"] == pytest.approx(round(24.0 / 21.0, 3))
    assert out["hcsc"]["seeds"] == [0, 1]
    table = mq.markdown({"pixel_floor": {"top1_k20": 0.398, "top1_k200": 0.373}, "summary": out})
    assert "| raw pixels (same bank) | 39.8 | 37.3 |" in table
    assert "| hcsc | 45.5 ± 2.1 | n/a | 0.200 ± 0.141 |" in table
    assert "| moco_v2 | 41.0 ± 1.4 | n/a | n/a |" in table
    assert "raw pixels" not in mq.markdown({"summary": out})  # an archive source has no pixel floor


def _tree(root: Path, split: str, colours: dict[str, tuple[int, int, int]], per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    for cls, rgb in colours.items():
        (root / split / cls).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(np.array(rgb) + rng.integers(-20, 21, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / split / cls / f"{i:04d}.jpg")


def test_subset_is_class_balanced_seeded_and_the_floor_reads_the_same_files(mq, tmp_path):
    colours = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200)}
    _tree(tmp_path, "train", colours, 6, 0)
    _tree(tmp_path, "test", colours, 2, 1)
    files = mq.subset_files(tmp_path, 4)
    assert len(files) == 12 and files == sorted(files) == mq.subset_files(tmp_path, 4)
    assert {c: sum(f.startswith(f"{c}/") for f in files) for c in colours} == {"a": 4, "b": 4, "c": 4}
    assert mq.subset_files(tmp_path, 4, seed=1) != files
    floor = mq.pixel_floor(tmp_path, files, (1, 3))
    assert floor == {"top1_k1": 1.0, "top1_k3": 1.0}  # one solid colour per class: pixels separate them
