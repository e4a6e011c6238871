"""ImageFolder trees: ``<split>/<class>/<image>`` and nested variants, or a flat folder labelled by an
annotations file (ImageNet / Tiny-ImageNet val), or a flat unlabelled folder.

Ids follow a sorted listing (by label, then relative path), so the same files always get the same ids.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import numpy as np

from hierclr.io.errors import DataFormatError
from hierclr.io.fs import Location

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
ANNOTATION_FILES = ("val_annotations.txt", "LOC_val_solution.csv")


@dataclass(frozen=True, eq=False)
class FolderListing:
    location: Location
    classes: tuple[str, ...]
    keys: tuple[str, ...]  # relative paths in id order
    labels: np.ndarray  # (N,) int64, -1 = unlabelled


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(
    loc: Location, *, classes: tuple[str, ...] | None = None, annotations: dict[str, str] | None = None,
) -> FolderListing:
    """List the images under ``loc`` and label them (class directories, else ``annotations``:
    file name -> class name, else an annotations file found in ``loc``, else unlabelled)."""
    if not loc.is_dir():
        raise DataFormatError(f"image folder not found or not a directory: {loc.uri}")
    rel = [loc.relative(i.path) for i in loc.list_files()]
    if annotations is None:
        for name in ANNOTATION_FILES:
            if name in rel:
                from hierclr.data.imagenet_meta import parse_val_annotations

                annotations = parse_val_annotations(loc.join(name).read_text(), source=loc.join(name).uri)
                break
    keys = [k for k in rel if _is_image(k)]
    if not keys:
        raise DataFormatError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {loc.uri}")
    if annotations is not None:
        names = tuple(classes) if classes is not None else tuple(sorted(set(annotations.values())))
        index = {c: i for i, c in enumerate(names)}
        labels = []
        for k in keys:
            cls = annotations.get(posixpath.basename(k))
            if cls is None:
                raise DataFormatError(f"{loc.uri}/{k} has no entry in the annotations file")
            if cls not in index:
                raise DataFormatError(f"{loc.uri}/{k} is annotated with class {cls!r}, which is not among the "
                                      f"{len(names)} classes")
            labels.append(index[cls])
        order = sorted(range(len(keys)), key=lambda i: keys[i])
    else:
        tops = {k.split("/", 1)[0] for k in keys if "/" in k}
        flat = [k for k in keys if "/" not in k]
        if not tops or tops == {"images"}:  # a flat folder (or Tiny-ImageNet's val/images) without labels
            names, labels = tuple(classes or ()), [-1] * len(keys)
        else:
            if flat:
                raise DataFormatError(f"{loc.uri} mixes class directories with loose images (e.g. {flat[0]}); "
                                      f"expected <class>/<image>")
            names = tuple(classes) if classes is not None else tuple(sorted(tops))
            index = {c: i for i, c in enumerate(names)}
            unknown = sorted(tops - set(index))
            if unknown:
                raise DataFormatError(f"{loc.uri} has class directories not in the class list: {unknown[:5]}")
            labels = [index[k.split("/", 1)[0]] for k in keys]
        order = sorted(range(len(keys)), key=lambda i: (labels[i], keys[i]))
    return FolderListing(loc, names, tuple(keys[i] for i in order), np.asarray([labels[i] for i in order], np.int64))


def folder_units(listing: FolderListing, chunk: int, seed: int | None) -> list[str]:
    """Read units of ``chunk`` files. With a seed, files are dealt to units by a seeded permutation, so
    a unit (and later a batch) mixes classes although ids are sorted by class."""
    n = len(listing.keys)
    order = np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)
    units = []
    for start in range(0, n, chunk):
        ids = np.sort(order[start : start + chunk]) if seed is None else order[start : start + chunk]
        units.append(json.dumps({"kind": "folder", "root": listing.location.path,
                                 "keys": [listing.keys[i] for i in ids], "ids": ids.tolist(),
                                 "labels": listing.labels[ids].tolist()}))
    return units


def read_folder_unit(unit: dict, filesystem) -> dict:
    images, shards = [], []
    for key in unit["keys"]:
        path = posixpath.join(unit["root"], key)
        try:
            with filesystem.open_input_stream(path) as f:
                images.append(f.read())
        except OSError:  # a vanished or unreadable file is a bad image (empty bytes), not a crash
            images.append(b"")
        shards.append(path)
    return {"id": np.asarray(unit["ids"], np.int64), "image": images,
            "label": np.asarray(unit["labels"], np.int64), "shard": shards}
