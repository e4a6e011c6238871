"""Native parquet shards written by ``prepare-data``, described by ``manifest.json``.

The manifest is the contract: a reader checks each shard's row count and ids against it (and, on
request, its sha256), so a truncated or swapped file fails with its name instead of shifting ids.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq

from hierclr.data.manifest import Manifest
from hierclr.io.errors import DataFormatError
from hierclr.io.fs import Location

COLUMNS = ("id", "key", "label", "image")


def sha256_of(loc: Location) -> str:
    h = hashlib.sha256()
    with loc.filesystem.open_input_stream(loc.path) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def parquet_units(directory: Location, manifest: Manifest) -> list[str]:
    units = []
    for s in manifest.shards:
        loc = directory.join(s.file)
        if s.rows == 0:
            raise DataFormatError(f"empty shard: {loc.uri} has 0 rows in {directory.uri}/manifest.json")
        info = loc.filesystem.get_file_info(loc.path)
        if info.size is None:
            raise DataFormatError(f"shard listed in the manifest is missing: {loc.uri}")
        if info.size != s.bytes:
            raise DataFormatError(f"shard {loc.uri} is {info.size} bytes, the manifest says {s.bytes}")
        units.append(json.dumps({"kind": "parquet", "path": loc.path, "uri": loc.uri, "first_id": s.first_id,
                                 "count": s.rows}))
    return units


def read_parquet_unit(unit: dict, filesystem) -> dict:
    try:
        table = pq.read_table(unit["path"], filesystem=filesystem, columns=list(COLUMNS))
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError/KeyError for damaged files
        raise DataFormatError(f"cannot read parquet shard {unit['uri']}: {e}") from e
    ids = table.column("id").to_numpy()
    expected = np.arange(unit["first_id"], unit["first_id"] + unit["count"])
    if len(ids) != unit["count"] or not np.array_equal(ids, expected):
        raise DataFormatError(f"shard {unit['uri']} holds {len(ids)} rows / ids not {unit['first_id']}.."
                              f"{unit['first_id'] + unit['count'] - 1} as its manifest says")
    images = table.column("image").to_pylist()
    return {"id": ids.astype(np.int64), "image": images, "label": table.column("label").to_numpy().astype(np.int64),
            "shard": [unit["uri"]] * len(ids)}
