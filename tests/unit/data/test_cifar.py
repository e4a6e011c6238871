"""CIFAR python archives: exact round trip on tiny written archives, directories, fine->coarse, every error path."""
from __future__ import annotations

import inspect
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers.cifar_archives import (
    CIFAR10_CLASSES,
    CIFAR100_FINE_TO_COARSE,
    write_cifar10_archive,
    write_cifar100_archive,
)
from PIL import Image

from hierclr.data.cifar import CifarArchive, download_cifar, encode_png, read_cifar_archive
from hierclr.io.errors import DataFormatError


def _extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _assert_split(got, want, coarse: bool) -> None:
    np.testing.assert_array_equal(got.images, want["images"])
    np.testing.assert_array_equal(got.labels, want["labels"])
    assert got.images.dtype == np.uint8 and got.images.shape == (len(want["labels"]), 32, 32, 3)
    assert got.labels.dtype == np.int64
    assert got.filenames == want["filenames"]
    if coarse:
        assert got.coarse_labels is not None and got.coarse_labels.dtype == np.int64
        np.testing.assert_array_equal(got.coarse_labels, want["coarse_labels"])
    else:
        assert got.coarse_labels is None


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
def test_cifar10_round_trip(tmp_path, suffix):
    want = write_cifar10_archive(tmp_path / f"cifar-10-python{suffix}", n_train_per_batch=3, n_test=5, seed=1)
    got = read_cifar_archive(want["path"])
    assert isinstance(got, CifarArchive) and got.name == "cifar10"
    assert got.classes == CIFAR10_CLASSES and got.coarse_classes is None
    assert set(got.splits) == {"train", "test"}
    _assert_split(got.splits["train"], want["train"], coarse=False)
    _assert_split(got.splits["test"], want["test"], coarse=False)
    # train is the five batches concatenated in order
    train = got.splits["train"]
    assert len(train) == 15
    for b, batch in enumerate(want["batches"]):
        np.testing.assert_array_equal(train.images[3 * b : 3 * b + 3], batch["images"])
        assert train.filenames[3 * b : 3 * b + 3] == batch["filenames"]
    assert train.filenames[0] == "train1_00000.png" and train.filenames[-1] == "train5_00002.png"


def test_pixel_layout_by_hand(tmp_path):
    """data row value at c*1024 + y*32 + x is image[y, x, c] (R, G, B planes, row-major)."""
    want = write_cifar10_archive(tmp_path / "c10.tar.gz", n_train_per_batch=2, n_test=2, seed=3)
    test = read_cifar_archive(want["path"]).splits["test"]
    row = want["test"]["data"][1]
    for c, y, x in [(0, 0, 0), (0, 0, 31), (1, 5, 7), (2, 31, 0), (2, 31, 31), (1, 17, 30)]:
        assert test.images[1, y, x, c] == row[c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(test.images[1, :, :, 0].ravel(), row[:1024])
    np.testing.assert_array_equal(test.images[1, :, :, 2].ravel(), row[2048:])


def test_cifar100_round_trip_and_fine_to_coarse(tmp_path):
    want = write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz", n_train=8, n_test=4, seed=2)
    got = read_cifar_archive(want["path"])
    assert got.name == "cifar100"
    assert got.classes == want["classes"] and len(got.classes) == 100 and got.classes[0] == "apple"
    assert got.coarse_classes == want["coarse_classes"] and len(got.coarse_classes) == 20
    _assert_split(got.splits["train"], want["train"], coarse=True)
    _assert_split(got.splits["test"], want["test"], coarse=True)
    # a tiny archive does not show every fine label
    with pytest.raises(DataFormatError, match="never occur"):
        got.fine_to_coarse()
    partial = got.fine_to_coarse(allow_missing=True)
    seen = np.unique(np.concatenate([want["train"]["labels"], want["test"]["labels"]]))
    np.testing.assert_array_equal(partial[seen], CIFAR100_FINE_TO_COARSE[seen])
    assert (np.delete(partial, seen) == -1).all()


def test_cifar100_full_fine_to_coarse(tmp_path):
    want = write_cifar100_archive(tmp_path / "c100.tar.gz", n_train=100, n_test=3)
    mapping = read_cifar_archive(want["path"]).fine_to_coarse()
    assert mapping.shape == (100,) and mapping.dtype == np.int64
    np.testing.assert_array_equal(mapping, CIFAR100_FINE_TO_COARSE)
    assert (np.bincount(mapping, minlength=20) == 5).all()  # the real hierarchy: 5 fine classes per coarse class
    classes = read_cifar_archive(want["path"])
    assert classes.coarse_classes[mapping[classes.classes.index("dolphin")]] == "aquatic_mammals"


def test_fine_to_coarse_errors(tmp_path):
    c10 = read_cifar_archive(write_cifar10_archive(tmp_path / "c10.tar.gz")["path"])
    with pytest.raises(DataFormatError, match="no coarse labels"):
        c10.fine_to_coarse()
    bad = read_cifar_archive(write_cifar100_archive(tmp_path / "c100.tar.gz", corrupt="conflicting_coarse")["path"])
    with pytest.raises(DataFormatError, match=r"maps to coarse labels 0 and 1") as e:
        bad.fine_to_coarse(allow_missing=True)
    assert "c100.tar.gz" in str(e.value)


@pytest.mark.parametrize("writer", [write_cifar10_archive, write_cifar100_archive])
def test_extracted_directory(tmp_path, writer):
    want = writer(tmp_path / "archive.tar.gz")
    from_tar = read_cifar_archive(want["path"])
    root = _extract(want["path"], tmp_path / "extracted")
    top = root / ("cifar-10-batches-py" if from_tar.name == "cifar10" else "cifar-100-python")
    renamed = tmp_path / "moved" / "my-cifar"
    for path in (top, str(top), root, renamed):  # the top folder, its parent, the top folder renamed
        if path == renamed:
            renamed.parent.mkdir()
            top.rename(renamed)
        got = read_cifar_archive(path)
        assert got.name == from_tar.name and got.classes == from_tar.classes
        assert got.coarse_classes == from_tar.coarse_classes
        for split in ("train", "test"):
            np.testing.assert_array_equal(got.splits[split].images, from_tar.splits[split].images)
            np.testing.assert_array_equal(got.splits[split].labels, from_tar.splits[split].labels)
            assert got.splits[split].filenames == from_tar.splits[split].filenames


def _error(path, *needles: str) -> str:
    with pytest.raises(DataFormatError) as e:
        read_cifar_archive(path)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    for needle in (str(path), *needles):
        assert needle in msg, msg
    return msg


def test_missing_file(tmp_path):
    _error(tmp_path / "nope.tar.gz", "not found")


def test_missing_member(tmp_path):
    c10 = write_cifar10_archive(tmp_path / "c10.tar.gz", corrupt="missing_member")["path"]
    _error(c10, "missing member", "cifar-10-batches-py/data_batch_3")
    c100 = write_cifar100_archive(tmp_path / "c100.tar.gz", corrupt="missing_member")["path"]
    _error(c100, "missing member", "cifar-100-python/test")
    # same in an extracted directory
    _error(_extract(c10, tmp_path / "x") / "cifar-10-batches-py", "cifar-10-batches-py/data_batch_3")


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        ("truncated_rows", "has 3 rows"),
        ("short_rows", "shape (N, 3072)"),
        ("label_out_of_range", "outside [0, 10)"),
        ("missing_key", "missing key b'labels'"),
        ("not_pickle", "not a valid CIFAR pickle"),
        ("evil_pickle", "refusing to load global"),
    ],
)
def test_bad_cifar10_batch(tmp_path, corrupt, needle):
    path = write_cifar10_archive(tmp_path / "c10.tar.gz", corrupt=corrupt)["path"]
    _error(path, "cifar-10-batches-py/data_batch_2", needle)


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        ("truncated_rows", "has 7 rows"),
        ("short_rows", "got uint8 (8, 3000)"),
        ("label_out_of_range", "outside [0, 100)"),
        ("missing_key", "missing key b'fine_labels'"),
        ("not_pickle", "not a valid CIFAR pickle"),
        ("evil_pickle", "refusing to load global"),
    ],
)
def test_bad_cifar100_batch(tmp_path, corrupt, needle):
    path = write_cifar100_archive(tmp_path / "c100.tar.gz", corrupt=corrupt)["path"]
    _error(path, "cifar-100-python/train", needle)


def test_bad_meta(tmp_path):
    c10 = write_cifar10_archive(tmp_path / "c10.tar.gz", corrupt="bad_meta")["path"]
    _error(c10, "cifar-10-batches-py/batches.meta", "9 names, expected 10")
    c100 = write_cifar100_archive(tmp_path / "c100.tar.gz", corrupt="bad_meta")["path"]
    _error(c100, "cifar-100-python/meta", "99 names, expected 100")


def test_not_an_archive(tmp_path):
    text = tmp_path / "notes.tar.gz"
    text.write_text("hello")
    _error(text, "not a readable tar archive")
    # a real tar without CIFAR members: the message lists what was expected
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        info = tarfile.TarInfo("images/cat.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    msg = _error(other, "no CIFAR members", "cifar-10-batches-py/{data_batch_1", "cifar-100-python/{train, test, meta}")
    assert "batches.meta" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    _error(empty, "no CIFAR members")


def test_truncated_gzip(tmp_path):
    path = write_cifar10_archive(tmp_path / "c10.tar.gz", n_train_per_batch=50)["path"]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _error(path, "not a readable tar archive")


def test_both_kinds_in_one_directory(tmp_path):
    _extract(write_cifar10_archive(tmp_path / "a.tar.gz")["path"], tmp_path / "root")
    _extract(write_cifar100_archive(tmp_path / "b.tar.gz")["path"], tmp_path / "root")
    _error(tmp_path / "root", "both CIFAR-10 and CIFAR-100")
    assert read_cifar_archive(tmp_path / "root" / "cifar-100-python").name == "cifar100"


def test_evil_pickle_is_not_executed(tmp_path, monkeypatch):
    import os

    path = write_cifar10_archive(tmp_path / "c10.tar.gz", corrupt="evil_pickle")["path"]
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(DataFormatError):
        read_cifar_archive(path)
    assert calls == []


def test_members_are_protocol_2_bytes_pickles(tmp_path):
    """The helper writes what the real archives hold (so the round trip tests mean something)."""
    path = write_cifar100_archive(tmp_path / "c100.tar.gz")["path"]
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["cifar-100-python/meta", "cifar-100-python/test", "cifar-100-python/train"]
        raw = tar.extractfile("cifar-100-python/train").read()
    assert raw[:2] == b"\x80\x02"
    batch = pickle.loads(raw, encoding="bytes")
    assert set(batch) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (8, 3072)


def test_encode_png_lossless_and_deterministic(rng):
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    png = encode_png(image)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert encode_png(image.copy()) == png
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image)
    # non-contiguous input (a view) and a different compression level decode to the same pixels
    view = np.zeros((32, 64, 3), dtype=np.uint8)
    view[:, ::2] = image
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(view[:, ::2], compress_level=9)))), image)
    gray = image[..., 0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(gray)))), gray)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))


def test_download_cifar_signature_only():
    """Never downloads in tests: just check the callable's shape."""
    params = inspect.signature(download_cifar).parameters
    assert list(params) == ["name", "root"]
    with pytest.raises(ValueError, match="unknown CIFAR"):
        download_cifar("cifar1000", "/nonexistent")  # type: ignore[arg-type]
