"""A run's cheap checks come first: a missing data path, too few images for the run, or an unwritable storage path
fails in seconds, before Ray starts, before a run directory or an MLflow run exists (issue 18: it used to take
100-180 s and leave an empty FAILED MLflow run per try). No Ray here: starting it fails the test."""
from __future__ import annotations

import sys

import pytest
from helpers.image_files import make_image_folder, write_tar_shards

from hierclr.config.pretrain import load_config
from hierclr.config.supervised import load_supervised_config
from hierclr.data import count_rows
from hierclr.data.prepare import PrepareConfig, plan_splits, prepare_split
from hierclr.io.fs import resolve
from hierclr.runtime.driver import run_training


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """The driver must fail before it starts (or joins) Ray: reaching ``start_ray`` is a failure."""
    def refuse(cfg):
        raise AssertionError("the driver started Ray before its cheap checks failed")

    monkeypatch.setattr("hierclr.runtime.driver.start_ray", refuse)


def _cfg(tmp_path, *extra):
    return load_config("demo", [f"checkpoint.storage_path={tmp_path}/runs", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                                *extra])


@pytest.mark.parametrize("field", ["train", "val"])
def test_a_missing_data_path_fails_first(tmp_path, field):
    cfg = _cfg(tmp_path, f"data.{field}={tmp_path}/nope/{field}")
    with pytest.raises(ValueError, match=rf"data.{field}: {tmp_path}/nope/{field} does not exist"):
        run_training(cfg, echo=lambda *a: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


def test_an_unwritable_storage_path_fails_first(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = _cfg(tmp_path, f"checkpoint.storage_path={tmp_path}/file/runs")
    with pytest.raises(ValueError, match=r"checkpoint.storage_path .*/file/runs is not writable"):
        run_training(cfg, echo=lambda *a: None)
    assert not (tmp_path / "m.db").exists()


def _parquet_train(tmp_path, per_class: int) -> str:
    """A real ``prepare-data`` parquet split (3 classes of ``per_class`` JPEG/PNG images, several shards), written
    in-process as the builtin datasets are."""
    make_image_folder(tmp_path / "src" / "train", per_class=per_class)
    pcfg = PrepareConfig(source=str(tmp_path / "src"), out=str(tmp_path / "pq"), shard_size=5)
    (plan,) = plan_splits(pcfg)
    prepare_split(plan, resolve(str(tmp_path / "pq" / "train")), pcfg, window=1, in_process=True)
    return str(tmp_path / "pq" / "train")


def test_row_counts_without_ray_or_images(tmp_path, monkeypatch):
    """parquet: the manifest; ImageFolder: the listing; WebDataset tars need their index pass, so no count."""
    parquet = _parquet_train(tmp_path, 4)
    write_tar_shards(tmp_path / "tars", counts=(4, 3))
    # `import ray` fails while counting (hierclr imports Ray only inside the functions that use it), whether or not
    # the test session's Ray is up
    monkeypatch.setitem(sys.modules, "ray", None)
    assert count_rows(parquet) == 12
    assert count_rows(str(tmp_path / "src" / "train")) == 12
    assert count_rows(str(tmp_path / "tars")) is None


@pytest.mark.parametrize("layout", ["parquet", "imagefolder"])
def test_too_few_images_fail_first(tmp_path, layout):
    """demo asks for 32 level-0 prototypes and batches of 64; 12 images are refused naming the field, before Ray,
    a run folder or an MLflow store exists."""
    if layout == "parquet":
        train = _parquet_train(tmp_path, 4)
    else:
        make_image_folder(tmp_path / "f", per_class=4)
        train = str(tmp_path / "f")
    cfg = _cfg(tmp_path, f"data.train={train}")
    with pytest.raises(ValueError, match=r"data.train \(.*\) has 12 images, fewer than the 32 prototypes asked for "
                                         r"\(clustering.sizes\)"):
        run_training(cfg, echo=lambda *a: None)
    cfg = _cfg(tmp_path, f"data.train={train}", "clustering.sizes=[8,4]")
    with pytest.raises(ValueError, match=r"has 12 images, fewer than one global batch \(optim.batch_size=64\)"):
        run_training(cfg, echo=lambda *a: None)
    cfg = _cfg(tmp_path, f"data.train={train}", "method=pcl", "pcl.num_clusters=[8,20]", "optim.batch_size=8",
               "model.queue_size=64")
    with pytest.raises(ValueError, match=r"fewer than the 20 prototypes asked for \(pcl.num_clusters\)"):
        run_training(cfg, echo=lambda *a: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


def test_a_finetune_with_too_few_images_fails_first(tmp_path):
    cfg = load_supervised_config("digits-finetune", [f"data.train={_parquet_train(tmp_path, 4)}",
                                                     f"checkpoint.storage_path={tmp_path}/runs",
                                                     f"tracking.uri=sqlite:///{tmp_path}/m.db"], task="finetune")
    with pytest.raises(ValueError, match=r"has 12 images, fewer than one global batch \(optim.batch_size=64\)"):
        run_training(cfg, echo=lambda *a: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()
