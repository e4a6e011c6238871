"""Tiny CIFAR-10 / CIFAR-100 python archives in the official format, with the arrays they should decode to.

Members are protocol-2 pickles of dicts with bytes keys, inside ``cifar-10-batches-py/`` or ``cifar-100-python/``
in a ``.tar.gz`` (or ``.tar``), like the real downloads. ``corrupt`` makes broken variants for error tests.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee",
    "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant",
    "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower",
    "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate",
    "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark",
    "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
    "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees", "vehicles_1",
    "vehicles_2",
)

# The real CIFAR-100 fine -> coarse assignment (index = fine label).
CIFAR100_FINE_TO_COARSE = np.array(
    [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
     0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
     10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
     18, 1, 2, 15, 6, 0, 17, 8, 14, 13],
    dtype=np.int64,
)  # fmt: skip

CIFAR10_CORRUPTIONS = ("missing_member", "truncated_rows", "short_rows", "label_out_of_range", "missing_key",
                       "not_pickle", "bad_meta", "evil_pickle")  # fmt: skip
CIFAR100_CORRUPTIONS = (*CIFAR10_CORRUPTIONS, "conflicting_coarse")


class _Evil:
    """Pickles to a call of ``os.system``: a restricted unpickler must refuse it (never unpickled in tests)."""

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("echo pwned",))


def _random_split(rng: np.random.Generator, n: int, num_classes: int, prefix: str) -> dict[str, Any]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)  # distinct labels while n <= num_classes
    return {
        "data": data,
        "images": data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1).copy(),
        "labels": labels,
        "filenames": tuple(f"{prefix}_{i:05d}.png" for i in range(n)),
    }


def _write_tar(path: str | Path, members: dict[str, bytes]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(raw))
    return path


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _check(corrupt: str | None, allowed: tuple[str, ...]) -> None:
    if corrupt is not None and corrupt not in allowed:
        raise ValueError(f"unknown corruption {corrupt!r}; expected one of {allowed}")


def _corrupt_batch(batch: dict[bytes, Any], corrupt: str | None, label_key: bytes, num_classes: int) -> None:
    if corrupt == "truncated_rows":
        batch[b"data"] = batch[b"data"][:-1]
    elif corrupt == "short_rows":
        batch[b"data"] = batch[b"data"][:, :3000]
    elif corrupt == "label_out_of_range":
        batch[label_key] = [*batch[label_key][:-1], num_classes]
    elif corrupt == "missing_key":
        del batch[label_key]


def write_cifar10_archive(
    path: str | Path, *, n_train_per_batch: int = 4, n_test: int = 5, seed: int = 0, corrupt: str | None = None
) -> dict[str, Any]:
    """Write a CIFAR-10 archive and return ``{"path", "classes", "coarse_classes", "train", "test", "batches"}``.

    ``train``/``test`` hold ``data`` (raw rows), ``images`` (HWC), ``labels``, ``filenames``; ``batches`` holds the
    five train batches in order. Corruptions hit ``data_batch_2`` (or drop ``data_batch_3`` / break the meta).
    """
    _check(corrupt, CIFAR10_CORRUPTIONS)
    rng = np.random.default_rng(seed)
    batches = [_random_split(rng, n_train_per_batch, 10, f"train{b}") for b in range(1, 6)]
    test = _random_split(rng, n_test, 10, "test")
    top = "cifar-10-batches-py"
    members: dict[str, bytes] = {}
    for i, split in enumerate([*batches, test]):
        member = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        batch = {
            b"batch_label": f"{member} of 5".encode(),
            b"labels": split["labels"].tolist(),
            b"data": split["data"],
            b"filenames": [f.encode() for f in split["filenames"]],
        }
        if member == "data_batch_2":
            _corrupt_batch(batch, corrupt, b"labels", 10)
            if corrupt == "not_pickle":
                members[f"{top}/{member}"] = b"this is not a pickle"
                continue
            if corrupt == "evil_pickle":
                batch[b"extra"] = _Evil()
        if corrupt == "missing_member" and member == "data_batch_3":
            continue
        members[f"{top}/{member}"] = _dump(batch)
    names = list(CIFAR10_CLASSES[:9]) if corrupt == "bad_meta" else list(CIFAR10_CLASSES)
    meta = {b"num_cases_per_batch": n_train_per_batch, b"label_names": [c.encode() for c in names], b"num_vis": 3072}
    members[f"{top}/batches.meta"] = _dump(meta)
    members[f"{top}/readme.html"] = b"<html></html>"
    train = {k: np.concatenate([b[k] for b in batches]) for k in ("data", "images", "labels")}
    train["filenames"] = tuple(f for b in batches for f in b["filenames"])
    return {
        "path": _write_tar(path, members),
        "classes": CIFAR10_CLASSES,
        "coarse_classes": None,
        "train": train,
        "test": test,
        "batches": batches,
    }


def write_cifar100_archive(
    path: str | Path, *, n_train: int = 8, n_test: int = 4, seed: int = 0, corrupt: str | None = None
) -> dict[str, Any]:
    """Write a CIFAR-100 archive and return ``{"path", "classes", "coarse_classes", "fine_to_coarse", "train", "test"}``.

    Splits also hold ``coarse_labels`` (the real fine -> coarse map). Corruptions hit ``train`` (or drop ``test``).
    """
    _check(corrupt, CIFAR100_CORRUPTIONS)
    rng = np.random.default_rng(seed)
    top = "cifar-100-python"
    members: dict[str, bytes] = {}
    out: dict[str, Any] = {
        "classes": tuple(CIFAR100_CLASSES),
        "coarse_classes": tuple(CIFAR100_COARSE_CLASSES),
        "fine_to_coarse": CIFAR100_FINE_TO_COARSE.copy(),
    }
    fine_names = CIFAR100_CLASSES[:99] if corrupt == "bad_meta" else CIFAR100_CLASSES
    members[f"{top}/meta"] = _dump(
        {
            b"fine_label_names": [c.encode() for c in fine_names],
            b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE_CLASSES],
        }
    )
    # Real order in the download: meta, test, train (CIFAR-10 has batches.meta last); the reader must not care.
    for member, n in (("test", n_test), ("train", n_train)):
        split = _random_split(rng, n, 100, member)
        split["coarse_labels"] = CIFAR100_FINE_TO_COARSE[split["labels"]]
        out[member] = split
        batch = {
            b"filenames": [f.encode() for f in split["filenames"]],
            b"batch_label": f"{member}ing batch 1 of 1".encode(),
            b"fine_labels": split["labels"].tolist(),
            b"coarse_labels": split["coarse_labels"].tolist(),
            b"data": split["data"],
        }
        if member == "train":
            _corrupt_batch(batch, corrupt, b"fine_labels", 100)
            if corrupt == "conflicting_coarse":
                fine = batch[b"fine_labels"][0]
                batch[b"fine_labels"] = [fine, fine, *batch[b"fine_labels"][2:]]
                batch[b"coarse_labels"] = [0, 1, *batch[b"coarse_labels"][2:]]
            if corrupt == "not_pickle":
                members[f"{top}/{member}"] = b"\x80\x02garbage"
                continue
            if corrupt == "evil_pickle":
                batch[b"extra"] = _Evil()
        if corrupt == "missing_member" and member == "test":
            continue
        members[f"{top}/{member}"] = _dump(batch)
    out["path"] = _write_tar(path, members)
    return out
