"""``data.fraction``: a seeded per-class fraction of the prepared split, read from the labels alone, the same ids in
the train and embed streams (no re-preparing; no Ray: real parquet shards of the built-in digits, a real ImageFolder)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.image_files import make_image_folder

import hierclr.data as data_mod
from hierclr.config.pretrain import load_config
from hierclr.config.supervised import load_supervised_config
from hierclr.data import source as source_mod
from hierclr.data.builtin import materialize_builtin
from hierclr.data.source import open_source
from hierclr.data.streams import _embed_task, _per_unit
from hierclr.data.transforms import TransformConfig
from hierclr.eval.subsets import per_class_subset
from hierclr.methods.base import fraction_ids
from hierclr.methods.contrastive import ContrastivePlan


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    return materialize_builtin("builtin://digits/train", tmp_path_factory.mktemp("builtin"))


def _rows(src) -> tuple[np.ndarray, np.ndarray]:
    """ids and labels as the unit readers (with the images) give them."""
    ids, labels = [], []
    for text in src.units:
        unit = json.loads(text)
        out = source_mod._READERS[unit["kind"]](unit, src.location.filesystem)
        ids.append(out["id"])
        labels.append(out["label"])
    ids, labels = np.concatenate(ids), np.concatenate(labels)
    order = np.argsort(ids)
    return ids[order], labels[order]


def test_source_labels_match_the_rows_without_reading_images(digits_dir, tmp_path):
    parquet = open_source(digits_dir)
    make_image_folder(tmp_path / "folder", per_class=7)
    folder = open_source(tmp_path / "folder", folder_chunk=4)
    for src in (parquet, folder):
        ids, labels = src.labels()
        want_ids, want_labels = _rows(src)
        assert np.array_equal(ids, np.arange(src.num_rows)) and np.array_equal(ids, want_ids)
        assert np.array_equal(labels, want_labels) and labels.dtype == np.int64


def test_fraction_is_seeded_stratified_and_keeps_unlabelled_rows():
    ids = np.arange(100)
    labels = np.array([0] * 50 + [1] * 30 + [-1] * 20)
    a = per_class_subset(ids, labels, 0.1, seed=1, unlabelled=True)
    assert [int(np.isin(a, ids[labels == c]).sum()) for c in (0, 1, -1)] == [5, 3, 2]
    assert np.array_equal(a, per_class_subset(ids[::-1], labels[::-1], 0.1, seed=1, unlabelled=True))
    assert not np.array_equal(a, per_class_subset(ids, labels, 0.1, seed=2, unlabelled=True))
    assert not np.isin(per_class_subset(ids, labels, 0.1, seed=1), ids[labels < 0]).any()  # label subsets: never


def test_fraction_ids_of_a_real_split(digits_dir):
    src = open_source(digits_dir)
    cfg = load_config("demo", ["data.fraction=0.25", "data.fraction_seed=3"])
    keep = fraction_ids(src, cfg.data)
    _, labels = src.labels()
    assert len(keep) == sum(round(0.25 * n) for n in np.bincount(labels))
    for c in range(10):  # a quarter of every class
        assert int(np.isin(keep, np.flatnonzero(labels == c)).sum()) == round(0.25 * int((labels == c).sum()))
    assert np.array_equal(keep, fraction_ids(src, cfg.data))
    assert fraction_ids(src, load_config("demo").data) is None  # fraction 1: every row, nothing filtered


def test_the_embed_task_reads_only_the_kept_ids(digits_dir):
    src = open_source(digits_dir)
    keep = fraction_ids(src, load_config("demo", ["data.fraction=0.1"]).data)
    run = _per_unit(_embed_task)
    seen = []
    for text in src.units:
        for out in run({"unit": np.array([text])}, batch_size=64, reader=src.reader_kwargs(), keep_ids=keep,
                       transforms=TransformConfig.preset("cifar"), ledger=None):
            assert out["image"].shape[1:] == (3, 32, 32)
            seen.append(out["id"])
    assert np.array_equal(np.sort(np.concatenate(seen)), keep)


def test_pretrain_streams_train_and_embed_the_same_ids(digits_dir, monkeypatch):
    made = []

    def fake(kind):
        def stream(source, cfg, keep_ids=None):
            made.append((kind, source.uri, keep_ids))
            return kind
        return stream

    monkeypatch.setattr(data_mod, "train_stream", fake("train"), raising=False)
    monkeypatch.setattr(data_mod, "embed_stream", fake("embed"), raising=False)
    cfg = load_config("demo", [f"data.train={digits_dir}", "data.val=null", "data.fraction=0.2",
                               "clustering.sizes=[32,16,8]"])
    prepared = ContrastivePlan(cfg).prepare(0)
    (k1, _, train_ids), (k2, _, embed_ids) = made
    assert (k1, k2) == ("train", "embed") and train_ids is embed_ids
    assert np.array_equal(train_ids, fraction_ids(open_source(digits_dir), cfg.data))
    assert prepared.extras["num_train"] == len(train_ids) and prepared.run_fields["num_rows"] == 1438
    assert f"{len(train_ids)} images of 1438 (data.fraction 0.2)" in prepared.header
    with pytest.raises(ValueError, match="fewer than the 32 prototypes"):
        ContrastivePlan(load_config("demo", [f"data.train={digits_dir}", "data.val=null", "data.fraction=0.01",
                                             "optim.batch_size=8"])).prepare(0)


def test_fraction_is_a_training_field_and_excludes_a_label_subset():
    with pytest.raises(ValueError, match="data.fraction"):
        load_config("demo", ["data.fraction=0"])
    with pytest.raises(ValueError, match="give one"):
        load_supervised_config("digits-finetune", ["data.fraction=0.5", "subset.fraction=0.1"])
    assert load_supervised_config("digits-finetune", ["data.fraction=0.5"]).data.fraction == 0.5
