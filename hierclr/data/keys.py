"""Which dataset id holds which source file, without reading any image: what a file list such as ImageNet's
``1percent.txt`` / ``10percent.txt`` (the standard semi-supervised subsets) is matched against."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from hierclr.data.imagenet_meta import parse_file_list, select_listed
from hierclr.data.source import ShardSource
from hierclr.io.errors import DataFormatError
from hierclr.io.fs import resolve


def row_keys(src: ShardSource) -> tuple[np.ndarray, list[str]]:
    """``(ids, keys)`` of every row, sorted by id: ``key`` is the image's path relative to its split
    (an ImageFolder's listing; the ``key`` column of ``hierclr prepare-data`` parquet shards)."""
    ids: list[np.ndarray] = []
    keys: list[str] = []
    for text in src.units:
        unit = json.loads(text)
        if unit["kind"] == "folder":
            ids.append(np.asarray(unit["ids"], np.int64))
            keys += unit["keys"]
        elif unit["kind"] == "parquet":
            table = pq.read_table(unit["path"], filesystem=src.location.filesystem, columns=["id", "key"])
            ids.append(table.column("id").to_numpy().astype(np.int64))
            keys += table.column("key").to_pylist()
        else:
            raise DataFormatError(f"{src.uri}: {src.format} shards carry no source file names to match a file list "
                                  "against; apply it when preparing the data (hierclr prepare-data --subset-file)")
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], [keys[i] for i in order]


def listed_ids(src: ShardSource, file_list: str) -> np.ndarray:
    """Sorted dataset ids of the files named in ``file_list`` (one file name or ``class/file`` per line)."""
    loc = resolve(file_list)
    if not loc.is_file():
        raise FileNotFoundError(f"file list {file_list} does not exist")
    ids, keys = row_keys(src)
    idx = select_listed(keys, parse_file_list(loc.read_text(), source=loc.uri), loc.uri, f"the split {src.uri}")
    return ids[np.asarray(idx, np.int64)]
