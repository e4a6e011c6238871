"""Random access by dataset id: the encoded image (and label) of a few ids, without reading the dataset.

Training streams whole read units through Ray Data; a visualisation needs eight images of one
prototype. :func:`fetch_rows` opens only the units that hold a requested id (an id range check for
parquet and tar units, membership for ImageFolder units) and, inside them, only what it needs:
parquet shards are read with an ``id`` filter (matching row groups and rows only), ImageFolder units
read just the requested files; a tar has no index, so its whole unit is streamed once.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from hierclr.data.source import _READERS, ShardSource
from hierclr.io.errors import DataFormatError

__all__ = ["FetchedRow", "fetch_images", "fetch_rows"]

_SHOWN = 10  # ids listed in one error message


class FetchedRow(NamedTuple):
    """One row read by id: encoded image bytes (``b""`` for a vanished file) and its class (-1 = none)."""

    image: bytes
    label: int


def fetch_images(source: ShardSource, ids: Iterable[int]) -> dict[int, bytes]:
    """Encoded image bytes per requested id (see :func:`fetch_rows`)."""
    return {i: row.image for i, row in fetch_rows(source, ids).items()}


def fetch_rows(source: ShardSource, ids: Iterable[int]) -> dict[int, FetchedRow]:
    """The rows of ``ids`` (duplicates collapse), reading only the units that hold them.

    Raises:
        KeyError: an id that no unit of ``source`` holds (the message lists them).
        DataFormatError: a unit that should hold an id does not return it (the message names the shard).
    """
    wanted = _as_ids(ids)
    out: dict[int, FetchedRow] = {}
    if wanted.size == 0:
        return out
    covered = np.zeros(wanted.size, bool)
    plan = []
    for text in source.units:
        unit = json.loads(text)
        if unit["kind"] == "folder":  # ids dealt to units by a seeded permutation: membership
            hit = np.isin(wanted, np.asarray(unit["ids"], np.int64))
        else:
            hit = (wanted >= unit["first_id"]) & (wanted < unit["first_id"] + unit["count"])
        if hit.any():
            plan.append((unit, wanted[hit]))
            covered |= hit
    if not covered.all():
        missing = wanted[~covered]
        raise KeyError(f"{missing.size} id(s) not in {source.uri} ({source.num_rows} rows): "
                       f"{missing[:_SHOWN].tolist()}{' ...' if missing.size > _SHOWN else ''}")
    for unit, need in plan:
        rows = _read_unit_rows(unit, need, source.location.filesystem)
        keep = set(need.tolist())
        got = np.asarray(rows["id"], np.int64)
        lost = np.setdiff1d(need, got)
        if lost.size:
            raise DataFormatError(f"{unit.get('uri', unit.get('root'))} does not hold id(s) {lost[:_SHOWN].tolist()} "
                                  f"although its listing says so: the dataset changed after it was opened")
        for i, image, label in zip(got.tolist(), rows["image"], np.asarray(rows["label"]).tolist()):
            if i in keep:
                out[i] = FetchedRow(bytes(image), int(label))
    return out


def _as_ids(ids: Iterable[int]) -> np.ndarray:
    """Sorted unique int64 ids; floats, bools and non-scalars are rejected."""
    arr = np.asarray(ids if hasattr(ids, "__array__") else list(ids))  # numpy, torch (CPU), or any iterable
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"ids must be a flat sequence of integers, got dtype {arr.dtype} shape {arr.shape}")
    return np.unique(arr.astype(np.int64))


def _read_unit_rows(unit: dict, need: np.ndarray, filesystem) -> dict:
    """``id``/``image``/``label`` of (at least) the ``need`` ids of one unit, reading as little as its kind allows."""
    kind = unit["kind"]
    if kind == "parquet":
        try:
            table = pq.read_table(unit["path"], filesystem=filesystem, columns=["id", "label", "image"],
                                  filters=[("id", "in", need.tolist())])
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError/KeyError for damaged files
            raise DataFormatError(f"cannot read parquet shard {unit['uri']}: {e}") from e
        return {"id": table.column("id").to_numpy(), "image": table.column("image").to_pylist(),
                "label": table.column("label").to_numpy()}
    if kind == "folder":
        pick = np.flatnonzero(np.isin(np.asarray(unit["ids"], np.int64), need)).tolist()
        sub = dict(unit, keys=[unit["keys"][j] for j in pick], ids=[unit["ids"][j] for j in pick],
                   labels=[unit["labels"][j] for j in pick])
        return _READERS["folder"](sub, filesystem)
    if kind in _READERS:
        return _READERS[kind](unit, filesystem)
    raise DataFormatError(f"unknown read unit kind {kind!r} (known: {sorted(_READERS)})")
