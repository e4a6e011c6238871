"""A run's cheap checks come first: a missing data path or an unwritable storage path fails in seconds, before
Ray starts, before a run directory or an MLflow run exists (issue 18: it used to take 100-180 s and leave an
empty FAILED MLflow run per try). No Ray here: starting it fails the test."""
from __future__ import annotations

import pytest

from hierclr.config.pretrain import load_config
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
