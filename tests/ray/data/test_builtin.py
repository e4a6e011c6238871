"""builtin://digits: scikit-learn's digits written once as a native parquet dataset (no download), read back
through open_source, checked pixel by pixel against an independent rendering; cache reuse, repair, races, errors."""
from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from hierclr.data import builtin
from hierclr.data.builtin import BUILTIN_DATASETS, DIGITS_ROWS, is_builtin, materialize_builtin
from hierclr.data.decode import decode_rgb
from hierclr.data.source import open_source
from hierclr.io.errors import DataFormatError

SHAPE_GROUP = {0: 0, 6: 0, 8: 0, 9: 0, 1: 1, 4: 1, 7: 1, 2: 2, 3: 2, 5: 2}  # loopy / straight / curvy


def _reference(image8: np.ndarray) -> np.ndarray:
    """PIL's bilinear resize of the 0..255-scaled intensities in float mode "F" (exact here: every value is a
    multiple of 1/1024), rounded half to even; (32, 32) uint8."""
    big = Image.fromarray((image8 * 255 / 16).astype(np.float32)).resize((32, 32), Image.BILINEAR)
    return np.rint(np.asarray(big, dtype=np.float64)).astype(np.uint8)


def _digest(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("builtin")
    paths = [materialize_builtin(f"builtin://digits/{s}", cache) for s in ("train", "val")]
    assert paths == [str(cache / "digits" / "train"), str(cache / "digits" / "val")]
    return cache


def test_digits_round_trip(digits_dir, ray_session):
    digits = load_digits()
    keys_of: dict[str, list[int]] = {}
    for split in ("train", "val"):
        src = open_source(digits_dir / "digits" / split)
        assert src.format == "parquet" and src.num_rows == DIGITS_ROWS[split]
        assert src.classes == tuple(str(d) for d in range(10)) and src.hierarchy.sizes == (10, 3)
        rows = sorted(src.read().take_all(), key=lambda r: r["id"])
        assert [r["id"] for r in rows] == list(range(DIGITS_ROWS[split]))  # dense ids per split
        table = pa.concat_tables(pq.read_table(p) for p in sorted((digits_dir / "digits" / split).glob("*.parquet")))
        key_by_id = dict(zip(table["id"].to_pylist(), table["key"].to_pylist()))
        index = [int(key_by_id[r["id"]].removeprefix("digit_")) for r in rows]  # position in load_digits()
        keys_of[split] = index
        for r, i in zip(rows, index):
            assert r["label"] == digits.target[i]
            assert list(r["labels"]) == [r["label"], SHAPE_GROUP[r["label"]]]
            image = decode_rgb(r["image"])
            assert image.shape == (3, 32, 32) and str(image.dtype) == "torch.uint8"
            ref = _reference(digits.images[i])
            assert all(np.array_equal(image[c].numpy(), ref) for c in range(3)), f"pixels of digit {i} differ"
    train, val = set(keys_of["train"]), set(keys_of["val"])
    assert len(train) + len(val) == 1797 and train | val == set(range(1797))  # disjoint, everything once
    # stratified: each class sends round(20 %) of its images to val
    counts = np.bincount(digits.target, minlength=10)
    val_counts = np.bincount(digits.target[sorted(val)], minlength=10)
    assert val_counts.tolist() == [round(0.2 * c) for c in counts]
    # rows are shuffled into shards: the first train shard mixes classes
    assert len(set(digits.target[keys_of["train"][:240]].tolist())) == 10


def test_second_call_reuses_the_cache(digits_dir):
    before = _digest(digits_dir)
    for split in ("train", "val"):
        materialize_builtin(f"builtin://digits/{split}", digits_dir)
    assert _digest(digits_dir) == before  # neither content nor mtimes changed
    assert sorted(p.name for p in digits_dir.iterdir()) == ["digits"]  # no temporary leftovers


@pytest.mark.parametrize("damage", ["delete_shard", "truncate_shard", "delete_manifest", "wrong_rows", "old_version"])
def test_damaged_cache_is_rebuilt(digits_dir, tmp_path, damage):
    cache = tmp_path / "cache"
    shutil.copytree(digits_dir / "digits", cache / "digits")
    reference = {k: h for k, (h, _) in _digest(cache).items()}
    train = cache / "digits" / "train"
    if damage == "delete_shard":
        (train / "part-00003.parquet").unlink()
    elif damage == "truncate_shard":
        (train / "part-00001.parquet").write_bytes((train / "part-00001.parquet").read_bytes()[:-10])
    elif damage == "delete_manifest":
        (cache / "digits" / "val" / "manifest.json").unlink()
    elif damage == "wrong_rows":
        text = (train / "manifest.json").read_text()
        (train / "manifest.json").write_text(text.replace(f'"num_rows": {DIGITS_ROWS["train"]}', '"num_rows": 10'))
    else:  # written by another version of the builtin dataset
        text = (train / "manifest.json").read_text()
        assert "builtin digits v1)" in text
        (train / "manifest.json").write_text(text.replace("builtin digits v1)", "builtin digits v0)"))
    assert materialize_builtin("builtin://digits/val", cache) == str(cache / "digits" / "val")
    assert {k: h for k, (h, _) in _digest(cache).items()} == reference  # rebuilt byte-identically
    assert sorted(p.name for p in cache.iterdir()) == ["digits"]


def test_concurrent_builds_agree(tmp_path, monkeypatch):
    """Two builders that both found no cache race on the final rename: both return the same intact copy."""
    barrier = threading.Barrier(2, timeout=60)
    build = builtin._build

    def build_together(target, spec):
        barrier.wait()  # both have decided to build
        build(target, spec)

    monkeypatch.setattr(builtin, "_build", build_together)
    results, errors = [], []

    def call(split):
        try:
            results.append(materialize_builtin(f"builtin://digits/{split}", tmp_path))
        except Exception as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(s,)) for s in ("train", "val")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [str(tmp_path / "digits" / s) for s in ("train", "val")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
    assert builtin._complete(tmp_path / "digits", builtin._registry()["digits"])


def test_install_replaces_a_damaged_target_and_yields_to_a_complete_one(tmp_path):
    spec = builtin._registry()["digits"]
    target = tmp_path / "digits"
    (target / "train").mkdir(parents=True)
    (target / "train" / "junk").write_text("left over")
    materialize_builtin("builtin://digits/train", tmp_path)  # damaged target: moved aside, replaced
    assert not (target / "train" / "junk").exists() and builtin._complete(target, spec)
    before = _digest(tmp_path)
    loser = tmp_path / ".digits.tmp-loser"
    (loser / "train").mkdir(parents=True)
    builtin._install(loser, target, spec)  # complete target: the loser's copy is not installed
    assert loser.exists() and _digest(target) == {k.removeprefix("digits/"): v for k, v in before.items()}


def test_uris_and_errors(tmp_path):
    assert is_builtin("builtin://digits/train") and not is_builtin("/data/digits") and not is_builtin(Path("x"))
    assert "digits" in BUILTIN_DATASETS
    with pytest.raises(ValueError, match=r"unknown builtin dataset 'mnist'.*available: builtin://digits/train, "
                                         r"builtin://digits/val"):
        materialize_builtin("builtin://mnist/train", tmp_path)
    with pytest.raises(DataFormatError, match=r"names no split of builtin dataset 'digits' \(splits: train, val\)"):
        materialize_builtin("builtin://digits/test", tmp_path)
    with pytest.raises(DataFormatError, match="names no split"):
        materialize_builtin("builtin://digits", tmp_path)
    with pytest.raises(DataFormatError, match="not a builtin dataset URI"):
        materialize_builtin("s3://bucket/digits", tmp_path)
    assert list(tmp_path.iterdir()) == []  # errors come before anything is written
