"""WebDataset tar shards: consecutive members sharing a key form a sample (``k.jpg`` + ``k.cls``).

A sample's id is its position in the sorted shard list (shard order, then member order), so an
index pass counts the samples of every shard first; it also reads the ``.cls`` labels, so the
class count and range checks are known before training starts.
"""
from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Iterator

import numpy as np

from hierclr.io.errors import DataFormatError
from hierclr.io.fs import Location

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
LABEL_EXTS = ("cls", "cls.txt", "label")


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000..002}.tar`` -> three names (WebDataset's shard-list notation; zero padding kept)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():]))
    return out


def list_tar_shards(loc: Location) -> list[Location]:
    """A directory of ``*.tar``, a single tar, or a brace pattern -> sorted shard locations."""
    if "{" in loc.path:
        parent = posixpath.dirname(loc.path)
        base = Location(loc.filesystem, parent, loc.uri.rsplit("/", 1)[0])
        shards = [base.join(posixpath.basename(p)) for p in expand_braces(loc.path)]
        missing = [s.uri for s in shards if not s.is_file()]
        if missing:
            raise DataFormatError(f"{len(missing)} shards of {loc.uri} do not exist, e.g. {missing[0]}")
        return shards
    if loc.is_file():
        return [loc]
    if not loc.is_dir():
        raise DataFormatError(f"webdataset shards not found: {loc.uri}")
    shards = [Location(loc.filesystem, i.path, loc.join(loc.relative(i.path)).uri)
              for i in loc.list_files(recursive=False) if i.path.endswith(".tar")]
    if not shards:
        raise DataFormatError(f"no .tar shards in {loc.uri}")
    return shards


def _split_name(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


def iter_samples(stream, shard_uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` per sample from an open tar stream, in member order."""
    key, members = None, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile() or posixpath.basename(info.name).startswith("."):
                    continue
                k, ext = _split_name(info.name)
                if k != key and key is not None:
                    yield key, members
                    members = {}
                key = k
                members[ext] = tar.extractfile(info).read()
    except tarfile.TarError as e:
        raise DataFormatError(f"corrupt tar shard {shard_uri}: {e}") from e
    if key is not None:
        yield key, members


def _label(members: dict[str, bytes], key: str, shard_uri: str) -> int:
    for ext in LABEL_EXTS:
        if ext in members:
            try:
                return int(members[ext].decode().strip())
            except ValueError:
                raise DataFormatError(f"{shard_uri}: sample {key} has a non-integer label {members[ext][:20]!r}")
    return -1


def _image(members: dict[str, bytes]) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in members:
            return members[ext]
    return b""  # no image member: decodes as a bad image, counted like any other


def index_shard(shard: Location) -> np.ndarray:
    """Labels of every sample in one shard (its length is the sample count)."""
    with shard.filesystem.open_input_stream(shard.path) as f:
        labels = [_label(m, k, shard.uri) for k, m in iter_samples(f, shard.uri)]
    if not labels:
        raise DataFormatError(f"empty shard: {shard.uri} holds no samples")
    return np.asarray(labels, np.int64)


def tar_units(shards: list[Location], counts: list[int]) -> list[str]:
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return [json.dumps({"kind": "tar", "path": s.path, "uri": s.uri, "first_id": int(offsets[i]), "count": int(counts[i])})
            for i, s in enumerate(shards)]


def read_tar_unit(unit: dict, filesystem) -> dict:
    ids, images, labels = [], [], []
    with filesystem.open_input_stream(unit["path"]) as f:
        for i, (key, members) in enumerate(iter_samples(f, unit["uri"])):
            ids.append(unit["first_id"] + i)
            images.append(_image(members))
            labels.append(_label(members, key, unit["uri"]))
    if len(ids) != unit["count"]:
        raise DataFormatError(f"{unit['uri']} holds {len(ids)} samples, the index pass counted {unit['count']}: "
                              f"the shard changed while reading")
    return {"id": np.asarray(ids, np.int64), "image": images, "label": np.asarray(labels, np.int64),
            "shard": [unit["uri"]] * len(ids)}
