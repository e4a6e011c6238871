"""Every shard format read back through Ray Data: ids, labels and bytes round-trip exactly; bad input
names its file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.image_files import make_image_folder, write_tar_shards

from hierclr.data.formats.webdataset import expand_braces
from hierclr.data.source import open_source
from hierclr.io.errors import DataFormatError
from hierclr.labels.hierarchy import LabelHierarchy


def _rows(src):
    rows = src.read().take_all()
    return sorted(rows, key=lambda r: r["id"])


def test_image_folder_ids_labels_bytes(tmp_path, ray_session):
    expected = make_image_folder(tmp_path / "train", per_class=4)
    src = open_source(tmp_path / "train", folder_chunk=5)
    assert src.format == "imagefolder" and src.classes == ("cat", "dog", "eel") and src.num_rows == 12
    rows = _rows(src)
    assert [r["id"] for r in rows] == list(range(12))
    # ids follow (label, path) order; bytes are the files' bytes
    order = sorted(expected, key=lambda k: (expected[k], k))
    for r, key in zip(rows, order):
        assert r["shard"].endswith(key)
        assert r["label"] == expected[key]
        assert bytes(r["image"]) == (tmp_path / "train" / key).read_bytes()
        assert list(r["labels"]) == [expected[key]]
    # stable: a second listing gives the same ids
    assert [r["shard"] for r in _rows(open_source(tmp_path / "train"))] == [r["shard"] for r in rows]


def test_image_folder_nested_and_annotated_val(tmp_path, ray_session):
    expected = make_image_folder(tmp_path / "train", nested=True, per_class=2)  # train/<wnid>/images/<img>
    src = open_source(tmp_path / "train")
    assert src.classes == ("cat", "dog", "eel")
    assert sorted((r["shard"].split("/train/")[1], r["label"]) for r in _rows(src)) == sorted(expected.items())
    val = tmp_path / "val" / "images"
    val.mkdir(parents=True)
    truth = {}
    for i, c in enumerate(["eel", "cat", "dog", "cat"]):
        (val / f"val_{i}.JPEG").write_bytes((tmp_path / "train" / next(iter(expected))).read_bytes())
        truth[f"val_{i}.JPEG"] = c
    (tmp_path / "val" / "val_annotations.txt").write_text(
        "".join(f"{k}\t{v}\t0\t0\t10\t10\n" for k, v in truth.items()))
    vsrc = open_source(tmp_path / "val", classes=src.classes)
    rows = _rows(vsrc)
    assert [(r["shard"].rsplit("/", 1)[1], int(r["label"])) for r in rows] == [
        (k, src.classes.index(v)) for k, v in sorted(truth.items())]


def test_unlabelled_folder(tmp_path, ray_session):
    flat = tmp_path / "unlabelled"
    make_image_folder(tmp_path / "tmp", per_class=2)
    flat.mkdir()
    for p in (tmp_path / "tmp").rglob("*.jpg"):
        (flat / p.name).write_bytes(p.read_bytes())
    rows = _rows(open_source(flat))
    assert len(rows) == 3 and all(r["label"] == -1 and list(r["labels"]) == [-1] for r in rows)


def test_webdataset_ids_across_shards(tmp_path, ray_session):
    samples = write_tar_shards(tmp_path / "wds", counts=(4, 3, 5))
    for uri in (tmp_path / "wds", str(tmp_path / "wds" / "shard-{000000..000002}.tar")):
        src = open_source(uri)
        assert src.format == "webdataset" and src.num_rows == 12 and src.classes == ("0", "1", "2")
        rows = _rows(src)
        assert [r["id"] for r in rows] == list(range(12))
        assert [bytes(r["image"]) for r in rows] == [s[0] for s in samples]
        assert [int(r["label"]) for r in rows] == [s[1] for s in samples]
        assert rows[4]["shard"].endswith("shard-000001.tar")


def test_webdataset_with_hierarchy_labels(tmp_path, ray_session):
    samples = write_tar_shards(tmp_path / "wds", counts=(6,), num_classes=3)
    h = LabelHierarchy(names=(("a", "b", "c"), ("ab", "c_")), parents=((0, 0, 1),))
    rows = _rows(open_source(tmp_path / "wds", classes=("a", "b", "c"), hierarchy=h))
    assert [list(r["labels"]) for r in rows] == [[s[1], (0, 0, 1)[s[1]]] for s in samples]


def test_expand_braces():
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert expand_braces("a{1..2}-{0..1}") == ["a1-0", "a1-1", "a2-0", "a2-1"]


def test_errors_name_the_file(tmp_path, ray_session):
    # empty tar shard
    write_tar_shards(tmp_path / "wds", counts=(2, 0))
    with pytest.raises(DataFormatError, match=r"empty shard: .*shard-000001\.tar"):
        open_source(tmp_path / "wds")
    # label outside the class range given
    write_tar_shards(tmp_path / "wds2", counts=(3,), label_override={1: 7})
    with pytest.raises(DataFormatError, match=r"label 7 in .*shard-000000\.tar is outside the 3 classes"):
        open_source(tmp_path / "wds2", classes=("a", "b", "c"))
    # a parquet directory without its manifest
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "part-00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataFormatError, match=r"missing manifest.json in .*pq"):
        open_source(tmp_path / "pq", format="parquet")
    # a hierarchy that does not cover every class
    make_image_folder(tmp_path / "f", per_class=1)
    h = LabelHierarchy(names=(("cat", "dog"), ("animal",)), parents=((0, 0),))
    with pytest.raises(DataFormatError, match=r"does not cover the classes of .*f: missing \['eel'\]"):
        open_source(tmp_path / "f", hierarchy=h)
    with pytest.raises(DataFormatError, match="dataset not found"):
        open_source(tmp_path / "nope")
    with pytest.raises(DataFormatError, match="no image files"):
        (tmp_path / "empty").mkdir()
        open_source(tmp_path / "empty")


def test_manifest_checks(tmp_path, ray_session):
    from hierclr.data.prepare import PrepareConfig, prepare_data

    make_image_folder(tmp_path / "src" / "train", per_class=4)
    prepare_data(PrepareConfig(source=str(tmp_path / "src"), out=str(tmp_path / "out"), shard_size=5))
    d = tmp_path / "out" / "train"
    src = open_source(d, verify=True)
    assert src.format == "parquet" and src.num_rows == 12 and len(src.units) == 3
    # a shard whose size changed
    part = d / "part-00001.parquet"
    data = part.read_bytes()
    part.write_bytes(data + b"x")
    with pytest.raises(DataFormatError, match=r"part-00001\.parquet is \d+ bytes, the manifest says"):
        open_source(d)
    # same size, different content: only the hash catches it
    part.write_bytes(data[:-10] + bytes(10))
    with pytest.raises(DataFormatError, match=r"part-00001\.parquet fails its content hash"):
        open_source(d, verify=True)
    part.write_bytes(data)
    part.unlink()
    with pytest.raises(DataFormatError, match="missing: .*part-00001"):
        open_source(d)
    m = json.loads((d / "manifest.json").read_text())
    m["shards"][0]["first_id"] = 3
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataFormatError, match="(?s)invalid manifest .* starts at id 3, expected 0"):
        open_source(d)


def test_local_uri_spellings(tmp_path, ray_session):
    make_image_folder(tmp_path / "train", per_class=1)
    a = open_source(f"file://{tmp_path / 'train'}")
    b = open_source(str(tmp_path / "train"))
    assert a.num_rows == b.num_rows == 3 and a.location.path == b.location.path


def test_resolve_object_store_uri():
    """s3:// URIs resolve through pyarrow's S3 filesystem (no network call until a file is touched)."""
    from pyarrow import fs as pafs

    from hierclr.io.fs import resolve

    loc = resolve("s3://some-bucket/imagenet/train?region=us-east-1")
    assert isinstance(loc.filesystem, pafs.S3FileSystem) and loc.path == "some-bucket/imagenet/train"
    assert loc.join("manifest.json").uri == "s3://some-bucket/imagenet/train/manifest.json"
    assert Path(resolve("rel/dir").path).is_absolute()
