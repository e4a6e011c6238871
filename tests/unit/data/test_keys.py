"""File lists (ImageNet's 1percent.txt / 10percent.txt) against dataset ids, without reading images: ImageFolder
listings and parquet ``key`` columns; the semi-supervised wiring in finetune and evaluate (issue 17 item 3)."""
from __future__ import annotations

import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.image_files import make_image_folder

from hierclr.data import open_source
from hierclr.data.keys import listed_ids, row_keys
from hierclr.data.manifest import Manifest, ShardInfo
from hierclr.data.source import ShardSource
from hierclr.io.errors import DataFormatError
from hierclr.io.fs import resolve


def _parquet_split(root, keys: list[str], labels: list[int], per_shard: int = 4):
    """A prepare-data style split written by hand: shards of (id, key, label, image) and a manifest."""
    root.mkdir(parents=True)
    shards = []
    for s, start in enumerate(range(0, len(keys), per_shard)):
        part = keys[start:start + per_shard]
        table = pa.table({"id": pa.array(np.arange(start, start + len(part)), pa.int64()), "key": part,
                          "label": pa.array(labels[start:start + per_shard], pa.int64()),
                          "image": pa.array([b"not decoded"] * len(part), pa.binary())})
        f = root / f"shard-{s:03d}.parquet"
        pq.write_table(table, f)
        shards.append(ShardInfo(file=f.name, rows=len(part), first_id=start, bytes=f.stat().st_size, sha256="-"))
    Manifest(split="train", num_rows=len(keys), classes=("a", "b"), shards=tuple(shards)).write(resolve(str(root)))
    return open_source(str(root))


def test_image_folder_keys_and_a_file_list(tmp_path):
    expected = make_image_folder(tmp_path / "train", per_class=4)
    src = open_source(str(tmp_path / "train"), folder_chunk=3)
    ids, keys = row_keys(src)
    assert ids.tolist() == list(range(12)) and sorted(keys) == sorted(expected)
    # ids follow the listing (sorted by class, then path): the same id -> key map the reader uses
    assert [expected[k] for k in keys] == sorted(expected.values())
    lst = tmp_path / "1percent.txt"
    lst.write_text("dog_002.jpg\ncat/cat_001.png\n\neel_003.png\n")
    got = listed_ids(src, str(lst))
    want = sorted(keys.index(k) for k in ("dog/dog_002.jpg", "cat/cat_001.png", "eel/eel_003.png"))
    assert got.tolist() == want
    lst.write_text("dog_002.jpg\nnope.jpg\n")
    with pytest.raises(DataFormatError, match="1 files of .*1percent.txt are not in the split .*, e.g. nope.jpg"):
        listed_ids(src, str(lst))
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        listed_ids(src, str(tmp_path / "missing.txt"))


def test_parquet_keys_and_a_file_list(tmp_path):
    keys = [f"n0{c}/n0{c}_{i}.JPEG" for c in range(2) for i in range(5)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(keys))  # prepare-data writes rows in a seeded random order
    src = _parquet_split(tmp_path / "train", [keys[i] for i in order], [int(keys[i][2]) for i in order])
    ids, got_keys = row_keys(src)
    assert ids.tolist() == list(range(10)) and got_keys == [keys[i] for i in order]
    lst = tmp_path / "10percent.txt"
    lst.write_text("n01_3.JPEG\nn00/n00_0.JPEG\n")
    want = sorted(got_keys.index(k) for k in ("n01/n01_3.JPEG", "n00/n00_0.JPEG"))
    assert listed_ids(src, str(lst)).tolist() == want
    dup = _parquet_split(tmp_path / "dup", ["a/x.JPEG", "b/x.JPEG"], [0, 1])
    lst.write_text("x.JPEG\n")
    with pytest.raises(DataFormatError, match="'x.JPEG' occurs in several classes.*<class>/<file>"):
        listed_ids(dup, str(lst))


def test_tar_shards_cannot_match_a_file_list(tmp_path):
    src = ShardSource("x.tar", "webdataset", resolve(str(tmp_path)), 1, ("a",), None,
                      (json.dumps({"kind": "tar", "path": "x.tar"}),))
    with pytest.raises(DataFormatError, match="carry no source file names.*--subset-file"):
        row_keys(src)


def test_finetune_subset_from_a_file_list(tmp_path):
    from hierclr.config.supervised import load_supervised_config
    from hierclr.methods.supervised import SupervisedPlan

    make_image_folder(tmp_path / "train", per_class=4)
    src = open_source(str(tmp_path / "train"))
    lst = tmp_path / "1percent.txt"
    lst.write_text("cat_000.jpg\neel_002.jpg\n")
    cfg = load_supervised_config("digits-finetune", [f"subset.file_list={lst}"])
    ids = SupervisedPlan(cfg)._subset_ids(src)
    _, keys = row_keys(src)
    assert sorted(posixpath.basename(keys[i]) for i in ids) == ["cat_000.jpg", "eel_002.jpg"]
    with pytest.raises(ValueError, match="subset: give one of file_list, fraction, ids_file, not file_list and "
                                         "fraction"):
        load_supervised_config("digits-finetune", [f"subset.file_list={lst}", "subset.fraction=0.1"])


def test_evaluate_passes_the_standard_lists_else_seeded_draws(tmp_path, digits_cache):
    from hierclr.config.evaluate import load_evaluate_config
    from hierclr.runtime.evaluate import trained_runs

    files = ["s3://b/imagenet/1percent.txt", "s3://b/imagenet/10percent.txt"]
    cfg = load_evaluate_config("digits", ["source=x", f"data.builtin_cache={digits_cache}", "protocols=[semi]",
                                          f"semi.subset_files={json.dumps(files)}", "semi.fractions=[0.01,0.1]"])
    runs = trained_runs(cfg.with_absolute_paths(), tmp_path, cfg.tracking)
    assert [r.label for r in runs] == ["semi0.01", "semi0.1"]
    sub = runs[1].config.subset
    assert (sub.file_list, sub.fraction, sub.ids_file, runs[1].ids_file) == (files[1], None, None, None)
    seeded = load_evaluate_config("digits", ["source=x", f"data.builtin_cache={digits_cache}", "protocols=[semi]",
                                             "semi.fractions=[0.5]"])
    (run,) = trained_runs(seeded.with_absolute_paths(), tmp_path, seeded.tracking)
    # the ids of the seeded per-class draw are written there after the feature pass, before the run starts
    assert run.config.subset.ids_file == str(tmp_path / "subset_0.5.npy") and run.ids_file == tmp_path / "subset_0.5.npy"
    assert run.fraction == 0.5 and run.config.subset.fraction is None
    with pytest.raises(ValueError, match="semi.subset_files has 1 files for 2 semi.fractions"):
        load_evaluate_config("digits", ["source=x", f"semi.subset_files={json.dumps(files[:1])}",
                                        "semi.fractions=[0.01,0.1]"])
