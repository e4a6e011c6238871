"""prepare-data: ImageFolder trees and CIFAR archives -> parquet shards + manifest, read back through
the parquet reader; options; corrupt images; resume after a killed run gives identical output."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.cifar_archives import write_cifar10_archive, write_cifar100_archive
from helpers.image_files import make_image_folder
from PIL import Image

from hierclr.data.prepare import PrepareConfig, prepare_data
from hierclr.data.source import open_source
from hierclr.io.errors import DataFormatError

REPO = Path(__file__).resolve().parents[3]


def _rows(directory):
    src = open_source(directory)
    return src, sorted(src.read().take_all(), key=lambda r: r["id"])


def _table(directory: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(Path(directory).glob("*.parquet")))


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.parquet"))} | {
        "manifest.json": hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()}


def test_image_folder_round_trip(tmp_path, ray_session):
    src_dir = tmp_path / "raw"
    train = make_image_folder(src_dir / "train", per_class=7)
    val = make_image_folder(src_dir / "val", per_class=2, seed=1)
    manifests = prepare_data(PrepareConfig(source=str(src_dir), out=str(tmp_path / "out"), shard_size=4))
    assert set(manifests) == {"train", "val"}
    m = manifests["train"]
    assert m.num_rows == 21 and [s.rows for s in m.shards] == [4, 4, 4, 4, 4, 1] and m.classes == ("cat", "dog", "eel")
    assert m.image_stats.formats == {"JPEG": 12, "PNG": 9} and m.image_stats.height.min == 24
    for split, expected in (("train", train), ("val", val)):
        src, rows = _rows(tmp_path / "out" / split)
        assert src.format == "parquet" and [r["id"] for r in rows] == list(range(len(expected)))
        assert all(r["shard"].endswith(".parquet") for r in rows)  # the shard column names the parquet file
        got = {}
        table = _table(tmp_path / "out" / split)
        for key, label, image in zip(table["key"].to_pylist(), table["label"].to_pylist(), table["image"].to_pylist()):
            got[key] = label
            assert image == (src_dir / split / key).read_bytes()  # original bytes kept by default
        assert got == expected
    # rows are shuffled into shards (classes mixed), ids dense and stable
    first_shard_labels = [r["label"] for r in _rows(tmp_path / "out" / "train")[1][:4]]
    assert len(set(first_shard_labels)) > 1


def test_cifar10_archive_with_hierarchy(tmp_path, ray_session):
    arch = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    edges = tmp_path / "h.tsv"
    edges.write_text("child\tparent\n" + "".join(
        f"{c}\t{'vehicle' if c in ('airplane', 'automobile', 'ship', 'truck') else 'animal'}\n" for c in arch["classes"]))
    manifests = prepare_data(PrepareConfig(source=str(arch["path"]), out=str(tmp_path / "out"), shard_size=7,
                                           hierarchy=str(edges)))
    assert manifests["train"].num_rows == 20 and manifests["test"].num_rows == 5
    src, rows = _rows(tmp_path / "out" / "train")
    assert src.hierarchy.sizes == (10, 2) and src.classes == arch["classes"]
    images = np.asarray(arch["train"]["images"])
    labels = np.asarray(arch["train"]["labels"])
    seen = set()
    table = _table(tmp_path / "out" / "train")
    for key, label, image in zip(table["key"].to_pylist(), table["label"].to_pylist(), table["image"].to_pylist()):
        i = int(key.split("_", 1)[0])
        seen.add(i)
        assert label == labels[i]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(image))), images[i])  # PNG: lossless
    assert seen == set(range(20))
    vehicle = {0, 1, 8, 9}
    assert all(list(r["labels"]) == [r["label"], 1 if r["label"] in vehicle else 0] for r in rows)


def test_cifar100_fine_and_coarse(tmp_path, ray_session):
    arch = write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz", n_train=12, n_test=3)
    prepare_data(PrepareConfig(source=str(arch["path"]), out=str(tmp_path / "out"), kind="cifar100"))
    src, rows = _rows(tmp_path / "out" / "train")
    assert src.hierarchy.sizes == (100, 20) and len(rows) == 12
    table = _table(tmp_path / "out" / "train")
    coarse_by_key = {k: int(arch["train"]["coarse_labels"][int(k.split("_", 1)[0])]) for k in table["key"].to_pylist()}
    id_to_key = dict(zip(table["id"].to_pylist(), table["key"].to_pylist()))
    assert all(int(r["labels"][1]) == coarse_by_key[id_to_key[int(r["id"])]] for r in rows)
    with pytest.raises(DataFormatError, match="is a cifar100 archive, not cifar10"):
        prepare_data(PrepareConfig(source=str(arch["path"]), out=str(tmp_path / "o2"), kind="cifar10"))


def test_val_fraction_subset_resize_reencode(tmp_path, ray_session):
    make_image_folder(tmp_path / "raw" / "train", per_class=10)
    out = tmp_path / "out"
    m = prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(out), val_fraction=0.2, seed=3))
    assert m["train"].num_rows == 24 and m["val"].num_rows == 6
    train_keys, val_keys = (set(_table(out / s)["key"].to_pylist()) for s in ("train", "val"))
    assert not train_keys & val_keys and len(train_keys | val_keys) == 30
    listed = ["cat_001.png", "dog_004.jpg", "eel_009.png"]
    (tmp_path / "1percent.txt").write_text("\n".join(listed) + "\n")
    m = prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / "sub"),
                                   subset_file=str(tmp_path / "1percent.txt"), resize=16, resize_mode="square",
                                   reencode="jpeg", quality=80))
    assert m["train"].num_rows == 3
    t = _table(tmp_path / "sub" / "train")
    assert sorted(k.split("/")[-1] for k in t["key"].to_pylist()) == listed
    for b in t["image"].to_pylist():
        im = Image.open(io.BytesIO(b))
        assert im.format == "JPEG" and im.size == (16, 16)
    assert m["train"].image_stats.height.max == 16 and m["train"].image_stats.formats == {"JPEG": 3}
    (tmp_path / "bad.txt").write_text("nope.jpg\n")
    with pytest.raises(DataFormatError, match="1 files of .*bad.txt are not in the train split, e.g. nope.jpg"):
        prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / "x"),
                                   subset_file=str(tmp_path / "bad.txt")))


def test_subset_by_class_path_when_file_names_repeat(tmp_path, ray_session):
    """CIFAR-style trees reuse file names across classes: subset entries then name <class>/<file>."""
    for c in ("cat", "dog"):
        (tmp_path / "raw" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "raw" / "train" / c / f"{i:04d}.png")
    (tmp_path / "list.txt").write_text("dog/0001.png\ncat/0002.png\n")
    m = prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / "sub"),
                                   subset_file=str(tmp_path / "list.txt")))
    assert m["train"].num_rows == 2
    assert sorted(_table(tmp_path / "sub" / "train")["key"].to_pylist()) == ["cat/0002.png", "dog/0001.png"]
    (tmp_path / "bare.txt").write_text("0001.png\n")
    with pytest.raises(DataFormatError, match="'0001.png' occurs in several classes .* <class>/<file>"):
        prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / "x"),
                                   subset_file=str(tmp_path / "bare.txt")))


def test_corrupt_images_skipped_or_abort(tmp_path, ray_session):
    make_image_folder(tmp_path / "raw" / "train", per_class=10, corrupt=1)
    m = prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / "out"), max_bad_fraction=0.05))
    assert m["train"].num_rows == 30 and [s.key for s in m["train"].skipped] == ["cat/zz_corrupt_0.jpg"]
    assert "UnidentifiedImageError" in m["train"].skipped[0].reason or m["train"].skipped[0].reason
    with pytest.raises(DataFormatError, match=r"1 of 31 images in .* split train do not decode"):
        prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / "o2")))
    assert not (tmp_path / "o2" / "train").exists()  # nothing written before the verdict


def test_config_errors():
    with pytest.raises(ValueError, match="shard_size"):
        PrepareConfig(source="a", out="b", shard_size=0)
    with pytest.raises(ValueError, match="download needs kind cifar10 or cifar100"):
        PrepareConfig(source="a", out="b", download=True)


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DISABLE_USAGE_STATS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hierclr.cli", "prepare-data", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


@pytest.mark.timeout(900)
def test_resume_after_kill_gives_identical_output(tmp_path, ray_session):
    """Kill a conversion midway (SIGKILL, no cleanup), rerun: finished shards are kept, the rest written,
    and the result is byte-identical to an uninterrupted run. Only the killed conversion is a subprocess (the
    CLI with a Ray of its own, which SIGKILL takes down with it); the reference and the rerun are the same
    conversion in this process, on the session's Ray (the CLI's own output is tested in test_cli_data)."""
    make_image_folder(tmp_path / "raw" / "train", per_class=60)  # 180 images
    args = ["--shard-size", "4", "--num-cpus", "1"]

    def convert(out: str):
        return prepare_data(PrepareConfig(source=str(tmp_path / "raw"), out=str(tmp_path / out), shard_size=4,
                                          num_cpus=1))

    assert convert("ref")["train"].num_rows == 180

    proc = _run_cli([str(tmp_path / "raw"), str(tmp_path / "out"), *args], start_new_session=True)
    progress = tmp_path / "out" / "train" / "_progress"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(progress.glob("*.json"))) < 5 and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is not None:  # it ended before the kill: its output says why
        raise AssertionError(f"prepare-data exited ({proc.returncode}) before the kill:\n"
                             f"{proc.stdout.read().decode()[-2000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(progress.glob("*.json")))
    assert 5 <= done_before < 45, f"the kill came too late to test resuming ({done_before} of 45 shards)"
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    # a half-written leftover from the killed run must not be trusted
    (tmp_path / "out" / "train" / "part-00044.parquet").write_bytes(b"PAR1 truncated")

    assert convert("out")["train"].num_rows == 180
    assert _digest(tmp_path / "out" / "train") == _digest(tmp_path / "ref" / "train")
