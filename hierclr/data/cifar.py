"""The official CIFAR-10 / CIFAR-100 "python version" archives, read without extracting to disk.

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python.tar.gz`` holds ``cifar-100-python/{train, test, meta}``. Every member is a protocol-2 pickle of
a dict with bytes keys; ``b"data"`` is uint8 ``(N, 3072)``, each row the R, G and B 32x32 planes one after another.
Pickles are loaded with a restricted unpickler (numpy arrays and plain containers only), so a hostile archive cannot
run code.
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hierclr.io.errors import DataFormatError

__all__ = ["CifarArchive", "CifarSplit", "download_cifar", "encode_png", "read_cifar_archive"]

CifarName = Literal["cifar10", "cifar100"]

IMAGE_SIZE = 32
ROW_SIZE = 3 * IMAGE_SIZE * IMAGE_SIZE

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_MEMBERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cifar10": (_CIFAR10_DIR, (*_CIFAR10_TRAIN, "test_batch", "batches.meta")),
    "cifar100": (_CIFAR100_DIR, ("train", "test", "meta")),
}
_NUM_CLASSES = {"cifar10": (10, None), "cifar100": (100, 20)}

# Globals a CIFAR pickle may reference: numpy array reconstruction, and _codecs.encode which Python 3 uses to
# pickle bytes at protocol 2. Anything else is refused.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


@dataclass(frozen=True, eq=False)
class CifarSplit:
    """One split: HWC uint8 images, int64 (fine) labels, CIFAR-100 coarse labels, and the original file names."""

    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None
    filenames: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class CifarArchive:
    """A whole CIFAR archive: class names in label order and the ``"train"`` / ``"test"`` splits."""

    name: str
    classes: tuple[str, ...]
    coarse_classes: tuple[str, ...] | None
    splits: dict[str, CifarSplit]
    source: str = ""

    def fine_to_coarse(self, *, allow_missing: bool = False) -> np.ndarray:
        """The ``(len(classes),)`` int64 fine -> coarse map, derived from the labels of all splits.

        A fine label seen with two coarse labels is an error; one never seen is an error too unless
        ``allow_missing`` (then its entry is -1). CIFAR-10 has no coarse labels and raises.
        """
        if self.coarse_classes is None:
            raise DataFormatError(f"{self.source or self.name}: {self.name} has no coarse labels")
        mapping = np.full(len(self.classes), -1, dtype=np.int64)
        for split_name, split in self.splits.items():
            assert split.coarse_labels is not None
            pairs = np.unique(np.stack([split.labels, split.coarse_labels], axis=1), axis=0)
            for fine, coarse in pairs.tolist():
                if mapping[fine] not in (-1, coarse):
                    raise DataFormatError(
                        f"{self.source or self.name}: fine label {fine} ({self.classes[fine]!r}) maps to coarse labels "
                        f"{int(mapping[fine])} and {coarse} (seen in split {split_name!r})"
                    )
                mapping[fine] = coarse
        missing = np.flatnonzero(mapping < 0)
        if missing.size and not allow_missing:
            raise DataFormatError(
                f"{self.source or self.name}: fine labels {missing.tolist()[:10]} never occur, so their coarse label "
                "is unknown (pass allow_missing=True to get -1)"
            )
        return mapping


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict[bytes, Any]:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on garbage input
        raise DataFormatError(f"{where}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _expected_listing() -> str:
    return " or ".join(f"{top}/{{{', '.join(members)}}}" for top, members in _MEMBERS.values())


def _tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name without leading './', bytes)`` of the regular files that could be CIFAR members."""
    wanted = {f"{top}/{m}" for top, members in _MEMBERS.values() for m in members}
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if not info.isfile() or name not in wanted:
                    continue
                f = tar.extractfile(info)
                assert f is not None
                yield name, f.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataFormatError(f"{path}: not a readable tar archive ({type(e).__name__}: {e})") from e


def _dir_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield the CIFAR members of an extracted archive: its top folder (possibly renamed) or that folder's parent."""
    layouts = dict(_MEMBERS.values())
    if path.name in layouts:
        bases = {path.name: path}
    elif any((path / top).is_dir() for top in layouts):
        bases = {top: path / top for top in layouts if (path / top).is_dir()}
    else:
        bases = {top: path for top, members in layouts.items() if any((path / m).is_file() for m in members)}
    for top, base in bases.items():
        for m in layouts[top]:
            if (base / m).is_file():
                yield f"{top}/{m}", (base / m).read_bytes()


def _decode_names(value: Any, where: str, key: bytes, count: int) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, bytes | str) for v in value):
        raise DataFormatError(f"{where}: {key!r} must be a list of strings")
    names = tuple(v.decode("utf-8") if isinstance(v, bytes) else v for v in value)
    if len(names) != count:
        raise DataFormatError(f"{where}: {key!r} has {len(names)} names, expected {count}")
    return names


def _labels(batch: dict[bytes, Any], key: bytes, n: int, num_classes: int, where: str) -> np.ndarray:
    if key not in batch:
        raise DataFormatError(f"{where}: missing key {key!r} (keys: {sorted(batch)})")
    try:
        labels = np.asarray(batch[key])
    except Exception as e:
        raise DataFormatError(f"{where}: {key!r} is not a label list ({e})") from e
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataFormatError(f"{where}: {key!r} must be a 1-D list of integers, got shape {labels.shape}")
    if len(labels) != n:
        raise DataFormatError(f"{where}: {key!r} has {len(labels)} entries but {b'data'!r} has {n} rows")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataFormatError(
            f"{where}: {key!r} value {int(labels[bad[0]])} at row {int(bad[0])} is outside [0, {num_classes})"
        )
    return labels


def _parse_batch(batch: dict[bytes, Any], where: str, name: str) -> CifarSplit:
    num_fine, num_coarse = _NUM_CLASSES[name]
    if b"data" not in batch:
        raise DataFormatError(f"{where}: missing key {b'data'!r} (keys: {sorted(batch)})")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_SIZE:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{where}: {b'data'!r} must be uint8 of shape (N, {ROW_SIZE}), got {desc}")
    n = data.shape[0]
    if name == "cifar10":
        labels = _labels(batch, b"labels", n, num_fine, where)
        coarse = None
    else:
        labels = _labels(batch, b"fine_labels", n, num_fine, where)
        assert num_coarse is not None
        coarse = _labels(batch, b"coarse_labels", n, num_coarse, where)
    if b"filenames" not in batch:
        raise DataFormatError(f"{where}: missing key {b'filenames'!r} (keys: {sorted(batch)})")
    filenames = _decode_names(batch[b"filenames"], where, b"filenames", n)
    images = np.ascontiguousarray(data.reshape(n, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
    return CifarSplit(images=images, labels=labels, coarse_labels=coarse, filenames=filenames)


def _concat(parts: list[CifarSplit]) -> CifarSplit:
    coarse = None if parts[0].coarse_labels is None else np.concatenate([p.coarse_labels for p in parts])  # type: ignore[misc]
    return CifarSplit(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        coarse_labels=coarse,
        filenames=tuple(f for p in parts for f in p.filenames),
    )


def read_cifar_archive(path: str | Path) -> CifarArchive:
    """Read a CIFAR-10 or CIFAR-100 python archive (``.tar.gz`` / ``.tar``, or an extracted directory).

    The kind is detected from the members present. Raises :class:`DataFormatError` naming the file (and member)
    when the path is missing, is not a CIFAR archive, lacks a member, or holds inconsistent data.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    members = dict(_dir_members(path) if path.is_dir() else _tar_members(path))
    found = {name for name, (top, _) in _MEMBERS.items() if any(m.startswith(top + "/") for m in members)}
    if len(found) != 1:
        what = "both CIFAR-10 and CIFAR-100 members" if found else "no CIFAR members"
        raise DataFormatError(f"{path}: not a single CIFAR archive ({what}); expected {_expected_listing()}")
    name = found.pop()
    top, expected = _MEMBERS[name]
    missing = [m for m in expected if f"{top}/{m}" not in members]
    if missing:
        raise DataFormatError(f"{path}: {name} archive is missing member(s) {', '.join(f'{top}/{m}' for m in missing)}")

    def load(member: str) -> tuple[dict[bytes, Any], str]:
        where = f"{path}[{top}/{member}]"
        return _unpickle(members[f"{top}/{member}"], where), where

    def split(member: str) -> CifarSplit:
        return _parse_batch(*load(member), name)

    num_fine, num_coarse = _NUM_CLASSES[name]
    meta, where = load("batches.meta" if name == "cifar10" else "meta")
    fine_key = b"label_names" if name == "cifar10" else b"fine_label_names"
    for key in (fine_key,) if name == "cifar10" else (fine_key, b"coarse_label_names"):
        if key not in meta:
            raise DataFormatError(f"{where}: missing key {key!r} (keys: {sorted(meta)})")
    classes = _decode_names(meta[fine_key], where, fine_key, num_fine)
    coarse_classes = None
    if num_coarse is not None:
        coarse_classes = _decode_names(meta[b"coarse_label_names"], where, b"coarse_label_names", num_coarse)
    if name == "cifar10":
        train, test = _concat([split(m) for m in _CIFAR10_TRAIN]), split("test_batch")
    else:
        train, test = split("train"), split("test")
    return CifarArchive(
        name=name, classes=classes, coarse_classes=coarse_classes, splits={"train": train, "test": test}, source=str(path)
    )


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """Lossless PNG bytes of an ``(H, W, 3)`` (or ``(H, W)``) uint8 image; the same input gives the same bytes."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"encode_png expects uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def download_cifar(name: CifarName, root: str | Path) -> Path:
    """Download the official archive into ``root`` with torchvision (needs internet) and return the ``.tar.gz`` path.

    torchvision also extracts it next to the archive; an archive already there (checksum ok) is not fetched again.
    """
    if name not in ("cifar10", "cifar100"):
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected 'cifar10' or 'cifar100'")
    from torchvision import datasets

    classes = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dataset = classes[name](root=str(root), train=True, download=True)
    return root / dataset.filename
