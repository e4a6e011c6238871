"""Images by id: bytes equal what the unit readers give, only the units holding the ids are read, unknown ids fail."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers.image_files import make_image_folder, write_tar_shards

from hierclr.data import source as source_mod
from hierclr.data.builtin import materialize_builtin
from hierclr.data.decode import decode_rgb
from hierclr.data.fetch import fetch_images, fetch_rows
from hierclr.data.formats.webdataset import index_shard, list_tar_shards, tar_units
from hierclr.data.source import ShardSource, open_source
from hierclr.io.fs import resolve


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ShardSource:
    return open_source(materialize_builtin("builtin://digits/train", tmp_path_factory.mktemp("builtin")))


def _unit_rows(src: ShardSource) -> dict[int, tuple[bytes, int]]:
    """Every row through the unit readers the training streams use."""
    out = {}
    for text in src.units:
        unit = json.loads(text)
        rows = source_mod._READERS[unit["kind"]](unit, src.location.filesystem)
        for i, image, label in zip(rows["id"].tolist(), rows["image"], rows["label"].tolist()):
            out[i] = (bytes(image), label)
    return out


def test_parquet_reads_only_the_needed_shards_and_rows(digits, monkeypatch):
    truth = _unit_rows(digits)
    assert len(digits.units) == 6 and len(truth) == 1438
    ids = [251, 5, 1437, 240, 5]  # shard 0, shard 1 (twice) and the last shard; a duplicate
    calls = []
    real = pq.read_table

    def spy(path, *args, **kwargs):
        table = real(path, *args, **kwargs)
        calls.append((path, table.num_rows))
        return table

    monkeypatch.setattr(pq, "read_table", spy)
    rows = fetch_rows(digits, ids)
    assert sorted(rows) == [5, 240, 251, 1437]
    for i, row in rows.items():
        assert (row.image, row.label) == truth[i]
        assert tuple(decode_rgb(row.image).shape) == (3, 32, 32)
    shards = [json.loads(u)["path"] for u in digits.units]
    assert sorted(calls) == sorted([(shards[0], 1), (shards[1], 2), (shards[5], 1)])  # filtered: needed rows only
    assert fetch_images(digits, np.array([7])) == fetch_images(digits, torch.tensor([7])) == {7: truth[7][0]}
    assert fetch_images(digits, []) == {}


def test_image_folder_reads_only_the_requested_files(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "train", per_class=6)  # 18 real JPEG/PNG files
    src = open_source(tmp_path / "train", folder_chunk=4)  # 5 units, ids dealt by a seeded permutation
    truth = _unit_rows(src)
    calls = []
    real = source_mod._READERS["folder"]

    def spy(unit, filesystem):
        calls.append(list(unit["ids"]))
        return real(unit, filesystem)

    monkeypatch.setitem(source_mod._READERS, "folder", spy)
    ids = [0, 17, 9]
    got = fetch_images(src, ids)
    assert got == {i: truth[i][0] for i in ids}
    for data in got.values():
        assert decode_rgb(data).shape[0] == 3
    holders = [u for u in map(json.loads, src.units) if set(u["ids"]) & set(ids)]
    assert len(calls) == len(holders) < len(src.units)
    assert sorted(i for c in calls for i in c) == sorted(ids)


def test_tar_units_are_streamed_whole_but_only_when_needed(tmp_path):
    samples = write_tar_shards(tmp_path / "wds", counts=(4, 3, 5))
    shards = list_tar_shards(resolve(tmp_path / "wds"))
    units = tar_units(shards, [len(index_shard(s)) for s in shards])  # what open_source builds, without Ray
    src = ShardSource(str(tmp_path / "wds"), "webdataset", resolve(tmp_path / "wds"), 12, ("0", "1", "2"), None,
                      tuple(units))
    rows = fetch_rows(src, [4, 11])
    assert {i: (r.image, r.label) for i, r in rows.items()} == {4: samples[4], 11: samples[11]}


def test_unknown_ids_are_named(digits):
    with pytest.raises(KeyError, match=r"1438.*99999"):
        fetch_images(digits, [3, 1438, 99999])
    with pytest.raises(KeyError, match="-1"):
        fetch_images(digits, [-1])
    with pytest.raises(ValueError, match="integers"):
        fetch_images(digits, [1.5])
