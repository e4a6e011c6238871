"""One entry point for every shard format: :func:`open_source` -> :class:`ShardSource` -> ``ray.data``.

Rows of :meth:`ShardSource.read` have the same schema whatever the files are:
``id`` (int64, stable, 0..N-1), ``image`` (encoded bytes), ``label`` (int64, -1 = unlabelled),
``labels`` ((L,) int64: the label at every hierarchy level, finest first; L = 1 without a hierarchy)
and ``shard`` (the file the row came from, for error reports).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hierclr.data.formats.image_folder import folder_units, list_image_folder, read_folder_unit
from hierclr.data.formats.parquet import parquet_units, read_parquet_unit
from hierclr.data.formats.webdataset import index_shard, list_tar_shards, read_tar_unit, tar_units
from hierclr.data.manifest import MANIFEST_NAME, Manifest
from hierclr.io.errors import DataFormatError
from hierclr.io.fs import Location, resolve
from hierclr.labels import LabelHierarchy, load_hierarchy
from hierclr.runtime.ray_start import OWN_RESOURCES

Format = Literal["auto", "parquet", "webdataset", "imagefolder"]
_READERS = {"folder": read_folder_unit, "tar": read_tar_unit, "parquet": read_parquet_unit}


@dataclass(frozen=True, eq=False)
class ShardSource:
    """A listed dataset: its format, size, classes, hierarchy and read units (not yet read)."""

    uri: str
    format: str
    location: Location
    num_rows: int
    classes: tuple[str, ...]
    hierarchy: LabelHierarchy | None
    units: tuple[str, ...] = field(repr=False)
    manifest: Manifest | None = field(default=None, repr=False)

    @property
    def num_levels(self) -> int:
        return self.hierarchy.num_levels if self.hierarchy is not None else 1

    def level_map(self) -> np.ndarray:
        """``(C, L)`` int64: row c = class c's label at every level."""
        c = max(len(self.classes), 1)
        if self.hierarchy is None:
            return np.arange(c, dtype=np.int64)[:, None]
        return self.hierarchy.labels_at_all_levels(np.arange(self.hierarchy.sizes[0]))

    def units_dataset(self, *, shuffle_seed: int | None = None, reseed_each_epoch: bool = True):
        """The read units (one per block) as a ``ray.data.Dataset``. With ``shuffle_seed`` their order is
        permuted on every execution (a new order each epoch, reproducible from the seed)."""
        import ray.data

        ds = ray.data.from_items([{"unit": u} for u in self.units], override_num_blocks=len(self.units))
        if shuffle_seed is not None:
            ds = ds.randomize_block_order(
                seed=ray.data.RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=reseed_each_epoch))
        return ds

    def reader_kwargs(self) -> dict:
        """Arguments of :func:`read_units` for this source (what a Ray task needs to read a unit)."""
        return {"filesystem": self.location.filesystem, "level_map": self.level_map(), "num_classes": len(self.classes)}

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, labels)`` of every row, int64, in id order, without reading an image: the ``id`` and ``label``
        columns of parquet shards, the listing of an ImageFolder, an index pass over WebDataset tars (Ray tasks)."""
        units = [json.loads(u) for u in self.units]
        if self.format == "parquet":
            import pyarrow.parquet as pq

            tables = [pq.read_table(u["path"], filesystem=self.location.filesystem, columns=["id", "label"])
                      for u in units]
            ids = np.concatenate([t.column("id").to_numpy() for t in tables])
            labels = np.concatenate([t.column("label").to_numpy() for t in tables])
        elif self.format == "imagefolder":
            ids = np.concatenate([np.asarray(u["ids"], np.int64) for u in units])
            labels = np.concatenate([np.asarray(u["labels"], np.int64) for u in units])
        else:
            import ray

            index = ray.remote(num_cpus=1, scheduling_strategy=OWN_RESOURCES)(index_shard)
            parts = ray.get([index.remote(resolve(u["uri"])) for u in units])
            ids = np.concatenate([np.arange(u["first_id"], u["first_id"] + len(p)) for u, p in zip(units, parts)])
            labels = np.concatenate(parts)
        order = np.argsort(ids, kind="stable")
        return ids[order].astype(np.int64), labels[order].astype(np.int64)

    def read(self, *, shuffle_seed: int | None = None, reseed_each_epoch: bool = True):
        """The rows as a ``ray.data.Dataset``, one read task per unit."""
        return self.units_dataset(shuffle_seed=shuffle_seed, reseed_each_epoch=reseed_each_epoch).map_batches(
            read_units, batch_size=1, zero_copy_batch=True, fn_kwargs=self.reader_kwargs())


def read_units(batch: dict, *, filesystem, level_map: np.ndarray, num_classes: int) -> dict:
    """Unit descriptors in, their rows out (with hierarchy labels and range checks)."""
    outs = []
    for text in batch["unit"]:
        unit = json.loads(text)
        out = _READERS[unit["kind"]](unit, filesystem)
        label = out["label"]
        bad = (label < -1) | (label >= num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataFormatError(f"label {int(label[i])} of id {int(out['id'][i])} in {out['shard'][i]} is outside "
                                  f"the class range [0, {num_classes})")
        labels = np.full((len(label), level_map.shape[1]), -1, np.int64)
        known = label >= 0
        labels[known] = level_map[label[known]]
        out["labels"] = labels
        outs.append(out)
    if len(outs) == 1:
        return outs[0]
    return {k: (np.concatenate([o[k] for o in outs]) if isinstance(outs[0][k], np.ndarray)
                else [x for o in outs for x in o[k]]) for k in outs[0]}


def _detect(loc: Location) -> str:
    if "{" in loc.path or loc.path.endswith(".tar"):
        return "webdataset"
    if not loc.exists():
        raise DataFormatError(f"dataset not found: {loc.uri}")
    if loc.join(MANIFEST_NAME).is_file():
        return "parquet"
    if loc.is_dir() and any(i.path.endswith(".tar") for i in loc.list_files(recursive=False)):
        return "webdataset"
    return "imagefolder"


def _classes_arg(classes) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        from hierclr.data.imagenet_meta import parse_class_index

        loc = resolve(classes)
        return tuple(parse_class_index(loc.read_text(), source=loc.uri))
    return tuple(classes)


def open_source(
    uri: str | os.PathLike,
    *,
    format: Format = "auto",
    hierarchy: LabelHierarchy | str | os.PathLike | None = None,
    classes: tuple[str, ...] | str | os.PathLike | None = None,
    annotations: dict[str, str] | None = None,
    folder_chunk: int = 256,
    folder_seed: int | None = 0,
    verify: bool = False,
) -> ShardSource:
    """List ``uri`` (a prepared parquet directory, WebDataset tars, or an ImageFolder tree).

    ``hierarchy``: a :class:`LabelHierarchy` or a JSON / edge-list file; parquet directories carry
    theirs in the manifest. ``classes``: class names in label order (or a file with one per line); for
    an ImageFolder the default is the sorted directory names, for tars ``"0".."C-1"``. ``verify``
    checks every parquet shard's sha256 against the manifest (reads all bytes once).
    """
    loc = resolve(uri)
    fmt = _detect(loc) if format == "auto" else format
    class_names = _classes_arg(classes)
    manifest = None
    if fmt == "parquet":
        manifest = Manifest.read(loc)
        units = parquet_units(loc, manifest)
        if verify:
            _verify_hashes(loc, manifest)
        if class_names is not None and manifest.classes and class_names != tuple(manifest.classes):
            raise DataFormatError(f"classes given do not match {loc.uri}/{MANIFEST_NAME}")
        class_names = tuple(manifest.classes)
        if hierarchy is None and manifest.hierarchy is not None:
            hierarchy = LabelHierarchy.from_dict(manifest.hierarchy, source=f"{loc.uri}/{MANIFEST_NAME}")
        num_rows = manifest.num_rows
    elif fmt == "webdataset":
        import ray

        shards = list_tar_shards(loc)
        labels = ray.get([ray.remote(num_cpus=1, scheduling_strategy=OWN_RESOURCES)(index_shard).remote(s)
                          for s in shards])
        units = tar_units(shards, [len(x) for x in labels])
        num_rows = sum(len(x) for x in labels)
        top = max(int(x.max()) for x in labels)
        if class_names is None:
            class_names = tuple(str(i) for i in range(top + 1)) if top >= 0 else ()
        elif top >= len(class_names):
            shard = next(s for s, x in zip(shards, labels) if int(x.max()) == top)
            raise DataFormatError(f"label {top} in {shard.uri} is outside the {len(class_names)} classes given")
    elif fmt == "imagefolder":
        listing = list_image_folder(loc, classes=class_names, annotations=annotations)
        class_names = listing.classes
        units = folder_units(listing, folder_chunk, folder_seed)
        num_rows = len(listing.keys)
    else:
        raise DataFormatError(f"unknown format {fmt!r}; expected parquet, webdataset or imagefolder")

    if hierarchy is not None and not isinstance(hierarchy, LabelHierarchy):
        hierarchy = load_hierarchy(hierarchy, classes=class_names)
    if hierarchy is not None and class_names and tuple(hierarchy.names[0]) != tuple(class_names):
        missing = sorted(set(class_names) - set(hierarchy.names[0]))
        raise DataFormatError(f"the label hierarchy does not cover the classes of {loc.uri}"
                              + (f": missing {missing[:5]}" if missing else ": class order differs"))
    return ShardSource(str(uri), fmt, loc, num_rows, tuple(class_names or ()), hierarchy, tuple(units), manifest)


def count_rows(uri: str | os.PathLike, *, format: Format = "auto") -> int | None:
    """Rows of a dataset without Ray and without reading an image: a parquet directory's ``manifest.json``, an
    ImageFolder's listing (which also checks its layout); None for WebDataset tars, whose count needs the index
    pass (a read of every tar, on Ray)."""
    loc = resolve(uri)
    fmt = _detect(loc) if format == "auto" else format
    if fmt == "parquet":
        return Manifest.read(loc).num_rows
    if fmt == "imagefolder":
        return len(list_image_folder(loc).keys)
    return None


def _verify_hashes(loc: Location, manifest: Manifest) -> None:
    import ray

    from hierclr.data.formats.parquet import sha256_of

    locs = [loc.join(s.file) for s in manifest.shards]
    hashes = ray.get([ray.remote(num_cpus=1, scheduling_strategy=OWN_RESOURCES)(sha256_of).remote(x) for x in locs])
    bad = [f"shard {x.uri} fails its content hash (manifest {s.sha256[:12]}..., file {h[:12]}...)"
           for s, x, h in zip(manifest.shards, locs, hashes) if h != s.sha256]
    if bad:
        raise DataFormatError(("; ".join(bad[:5]) + (f"; ... {len(bad) - 5} more" if len(bad) > 5 else "")
                               + f" ({len(bad)} of {len(locs)} shards fail)") if len(bad) > 1 else bad[0])
