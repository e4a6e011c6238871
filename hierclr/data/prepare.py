"""``prepare-data``: convert an ImageFolder tree or a CIFAR archive into native parquet shards.

Two passes, both parallel Ray tasks: *scan* decodes every source image once (a corrupt one is
skipped and listed in the manifest; too many abort before anything is written), then *write* packs
the good images, in a seeded random order so every shard mixes classes, into shards of
``shard_size`` rows with dense ids 0..N-1. Each finished shard leaves a progress record (its plan
hash and sha256); a rerun skips shards whose file still matches it, so an interrupted conversion
resumes and produces byte-identical output. ``manifest.json`` is written last: its presence marks a
complete split, and the progress records (``_progress/``) are removed then.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

import hierclr
from hierclr.data.manifest import ImageStats, Manifest, ShardInfo, SizeStats, SkippedImage
from hierclr.io.errors import DataFormatError
from hierclr.io.fs import Location, resolve
from hierclr.labels import LabelHierarchy, load_hierarchy
from hierclr.runtime.ray_start import OWN_RESOURCES

log = logging.getLogger(__name__)
PROGRESS_DIR = "_progress"
SCHEMA = pa.schema([("id", pa.int64()), ("key", pa.string()), ("label", pa.int64()), ("image", pa.binary())])


class PrepareConfig(BaseModel):
    """Options of ``hierclr prepare-data`` (one field per command-line flag)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="ImageFolder root (with train/ val/ ...) or split dir, or a CIFAR archive/dir")
    out: str = Field(description="output directory (local path or s3:// / gs:// URI); one sub-directory per split")
    kind: Literal["auto", "imagefolder", "cifar10", "cifar100"] = "auto"
    splits: tuple[str, ...] = Field((), description="ImageFolder splits to convert (default: train/val/test present)")
    shard_size: int = Field(1000, ge=1, description="rows per parquet shard")
    reencode: Literal["none", "jpeg", "png"] = Field("none", description="none keeps the original bytes")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality when re-encoding")
    resize: int | None = Field(None, ge=1, description="resize for low-resolution variants (re-encodes)")
    resize_mode: Literal["shorter", "square"] = Field("shorter", description="shorter side to `resize`, or a square")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="carve a `val` split out of train")
    subset_file: str | None = Field(None, description="keep only these train files (e.g. ImageNet 1percent.txt)")
    val_annotations: str | None = Field(None, description="labels of a flat val folder (file -> class)")
    hierarchy: str | None = Field(None, description="label hierarchy: JSON or a `child parent` edge list")
    hierarchy_depths: tuple[int, ...] | None = Field(
        None, description="cut an edge-list tree (e.g. WordNet) at these depths from the root; default: full paths")
    hierarchy_order: Literal["child_parent", "parent_child"] = Field(
        "child_parent", description="column order of the edge list (ImageNet's wordnet.is_a.txt is parent_child)")
    download: bool = Field(False, description="download the CIFAR archive into `source` (needs internet)")
    verify: bool = Field(True, description="decode every image in the scan pass")
    max_bad_fraction: float = Field(0.001, ge=0.0, le=1.0)
    seed: int = Field(0, description="seeds the row order in shards and the val carve-out")
    num_cpus: int | None = Field(None, ge=1, description="parallel tasks (default: the Ray cluster's CPUs)")

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.download and self.kind not in ("cifar10", "cifar100"):
            raise ValueError("download needs kind cifar10 or cifar100 (ImageNet cannot be downloaded without a login)")
        return self


@dataclass(eq=False)
class SplitPlan:
    """One output split before conversion: what to read, how it is labelled."""

    name: str
    keys: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    hierarchy: LabelHierarchy | None
    loader: object  # FolderLoader | ArrayLoader, picklable, loads item i as bytes


@dataclass(frozen=True)
class FolderLoader:
    root: Location

    def __call__(self, key: str, index: int) -> bytes:
        with self.root.filesystem.open_input_stream(posixpath.join(self.root.path, key)) as f:
            return f.read()


@dataclass(frozen=True)
class ArrayLoader:
    """CIFAR images live in memory as an (N, 32, 32, 3) array (shared through the object store)."""

    images: object  # ray.ObjectRef to the array, resolved once per task; or the array itself (in-process writes)

    def __call__(self, key: str, index: int) -> bytes:
        from hierclr.data.cifar import encode_png

        return encode_png(self._array()[index])

    def _array(self) -> np.ndarray:
        if isinstance(self.images, np.ndarray):
            return self.images
        import ray

        if not hasattr(self, "_cache"):
            object.__setattr__(self, "_cache", ray.get(self.images))
        return self._cache


# ----------------------------------------------------------------------------------------------- planning


def _carve(plans: list[SplitPlan], cfg: PrepareConfig) -> list[SplitPlan]:
    out = []
    for p in plans:
        if p.name == "train" and cfg.subset_file:
            from hierclr.data.imagenet_meta import parse_file_list, select_listed

            loc = resolve(cfg.subset_file)
            idx = select_listed(p.keys, parse_file_list(loc.read_text(), source=loc.uri), loc.uri, "the train split")
            p = SplitPlan(p.name, [p.keys[i] for i in idx], p.labels[idx], p.classes, p.hierarchy,
                          _Subset(p.loader, idx))
        if p.name == "train" and cfg.val_fraction > 0:
            if any(q.name == "val" for q in plans):
                raise DataFormatError(f"{cfg.source} already has a val split; val_fraction would make a second one")
            n = len(p.keys)
            perm = np.random.default_rng(cfg.seed).permutation(n)
            n_val = round(cfg.val_fraction * n)
            val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            for name, idx in (("train", train_idx), ("val", val_idx)):
                out.append(SplitPlan(name, [p.keys[i] for i in idx], p.labels[idx], p.classes, p.hierarchy,
                                     _Subset(p.loader, idx.tolist())))
            continue
        out.append(p)
    return out


@dataclass(frozen=True)
class _Subset:
    loader: object
    index: list[int]

    def __call__(self, key: str, index: int) -> bytes:
        return self.loader(key, self.index[index])


def plan_splits(cfg: PrepareConfig) -> list[SplitPlan]:
    kind = cfg.kind
    if cfg.download:
        from hierclr.data.cifar import download_cifar

        archive = download_cifar(kind, cfg.source)
    else:
        archive = cfg.source
    src = resolve(archive)
    if kind == "auto":
        kind = "imagefolder" if src.is_dir() and not _looks_like_cifar(src) else "cifar"
    if kind in ("cifar", "cifar10", "cifar100"):
        plans = _plan_cifar(src, cfg)
    else:
        plans = _plan_folder(src, cfg)
    return _carve(plans, cfg)


def _looks_like_cifar(src: Location) -> bool:
    names = {posixpath.basename(i.path) for i in src.list_files()}
    return bool({"batches.meta", "meta"} & names) and bool({"data_batch_1", "train"} & names)


def _plan_cifar(src: Location, cfg: PrepareConfig) -> list[SplitPlan]:
    import ray

    from hierclr.data.cifar import read_cifar_archive

    if not isinstance(src.filesystem, __import__("pyarrow.fs").fs.LocalFileSystem):
        raise DataFormatError(f"CIFAR archives are read from a local path, got {src.uri}")
    archive = read_cifar_archive(src.path)
    if cfg.kind in ("cifar10", "cifar100") and archive.name != cfg.kind:
        raise DataFormatError(f"{src.uri} is a {archive.name} archive, not {cfg.kind}")
    if archive.name == "cifar100":
        hierarchy = _cifar100_hierarchy(archive)
    else:
        hierarchy = _load_hierarchy(cfg, archive.classes) if cfg.hierarchy else None
    plans = []
    for name, split in archive.splits.items():
        keys = [f"{i:05d}_{f}" for i, f in enumerate(split.filenames)]
        plans.append(SplitPlan(name, keys, split.labels.astype(np.int64), archive.classes, hierarchy,
                               ArrayLoader(ray.put(split.images))))
    return plans


def _load_hierarchy(cfg: PrepareConfig, classes: tuple[str, ...]) -> LabelHierarchy:
    if cfg.hierarchy.lower().endswith(".json"):
        return load_hierarchy(cfg.hierarchy, classes=classes)
    return load_hierarchy(cfg.hierarchy, classes=classes, depths=cfg.hierarchy_depths, order=cfg.hierarchy_order)


def _cifar100_hierarchy(archive) -> LabelHierarchy:
    """The built-in 100 -> 20 hierarchy, checked against the coarse labels the archive carries (an
    archive with other class names gets the mapping its own labels imply)."""
    from hierclr.labels import cifar100

    builtin = cifar100()
    if tuple(archive.classes) == builtin.names[0] and tuple(archive.coarse_classes) == builtin.names[1]:
        seen = archive.fine_to_coarse(allow_missing=True)
        known = seen >= 0
        if not np.array_equal(seen[known], np.asarray(builtin.parents[0])[known]):
            f = int(np.flatnonzero(known & (seen != np.asarray(builtin.parents[0])))[0])
            raise DataFormatError(f"{archive.source}: fine class {archive.classes[f]} has coarse label {seen[f]}, "
                                  f"the CIFAR-100 hierarchy says {builtin.parents[0][f]}")
        return builtin
    parents = archive.fine_to_coarse()
    return LabelHierarchy(names=(archive.classes, archive.coarse_classes), parents=(tuple(int(p) for p in parents),),
                          level_names=("fine", "coarse"))


def _plan_folder(src: Location, cfg: PrepareConfig) -> list[SplitPlan]:
    from hierclr.data.formats.image_folder import list_image_folder

    present = [s for s in ("train", "val", "test") if src.join(s).is_dir()]
    splits = list(cfg.splits) or present
    if not splits:  # the folder itself is one split
        roots = [("train", src)]
    else:
        missing = [s for s in splits if not src.join(s).is_dir()]
        if missing:
            raise DataFormatError(f"split directories not found under {src.uri}: {missing}")
        roots = [(s, src.join(s)) for s in splits]
    annotations = None
    if cfg.val_annotations:
        from hierclr.data.imagenet_meta import parse_val_annotations

        loc = resolve(cfg.val_annotations)
        annotations = parse_val_annotations(loc.read_text(), source=loc.uri)
    plans, classes = [], None
    for name, root in roots:
        listing = list_image_folder(root, classes=classes, annotations=annotations if name != "train" else None)
        if listing.classes and classes is None:
            classes = listing.classes  # later splits (val) use train's class order
        plans.append(SplitPlan(name, list(listing.keys), listing.labels, listing.classes, None, FolderLoader(root)))
    if cfg.hierarchy and not classes:
        raise DataFormatError(f"a hierarchy was given but {src.uri} has no class directories to attach it to")
    hierarchy = _load_hierarchy(cfg, classes) if cfg.hierarchy else None
    for p in plans:
        p.hierarchy = hierarchy
    return plans


# ----------------------------------------------------------------------------------------------- tasks


def _scan(loader, keys: list[str], indices: list[int]) -> list[str | None]:
    """Decode each image; None where it is good, else the reason."""
    from hierclr.data.decode import CorruptImageError, decode_rgb

    reasons = []
    for key, i in zip(keys, indices):
        try:
            decode_rgb(loader(key, i))
            reasons.append(None)
        except (CorruptImageError, OSError) as e:
            reasons.append(f"{type(e).__name__}: {e}")
    return reasons


def _transform_bytes(data: bytes, cfg: PrepareConfig) -> bytes:
    if cfg.reencode == "none" and cfg.resize is None:
        return data
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
        im = im.convert("RGB")
        if cfg.resize is not None:
            w, h = im.size
            if cfg.resize_mode == "square":
                size = (cfg.resize, cfg.resize)
            else:
                s = cfg.resize / min(w, h)
                size = (max(1, round(w * s)), max(1, round(h * s)))
            im = im.resize(size, Image.BICUBIC if cfg.resize_mode == "shorter" else Image.BOX)
        buf = io.BytesIO()
        target = cfg.reencode if cfg.reencode != "none" else ("png" if fmt == "PNG" else "jpeg")
        if target == "jpeg":
            im.save(buf, format="JPEG", quality=cfg.quality)
        else:
            im.save(buf, format="PNG", compress_level=6)
        return buf.getvalue()


def _write_shard(out: Location, file: str, loader, keys: list[str], indices: list[int], labels: list[int],
                 first_id: int, cfg: PrepareConfig, plan_hash: str) -> dict:
    from hierclr.data.decode import probe

    images = [_transform_bytes(loader(k, i), cfg) for k, i in zip(keys, indices)]
    table = pa.table({"id": pa.array(np.arange(first_id, first_id + len(keys)), pa.int64()), "key": keys,
                      "label": pa.array(labels, pa.int64()), "image": pa.array(images, pa.binary())}, schema=SCHEMA)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="none", row_group_size=256, write_statistics=False)
    data = buf.getvalue().to_pybytes()
    probes = [probe(b) for b in images]
    sizes = np.array([p[1:] for p in probes], dtype=np.int64)
    formats: dict[str, int] = {}
    for f, _, _ in probes:
        formats[f] = formats.get(f, 0) + 1
    record = {"file": file, "rows": len(keys), "first_id": first_id, "bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "plan": plan_hash,
              "stats": {"h": [int(sizes[:, 0].min()), int(sizes[:, 0].max()), int(sizes[:, 0].sum())],
                        "w": [int(sizes[:, 1].min()), int(sizes[:, 1].max()), int(sizes[:, 1].sum())],
                        "formats": formats}}
    out.join(file).write_bytes_atomic(data)
    out.join(PROGRESS_DIR, file + ".json").write_bytes_atomic(json.dumps(record).encode())
    return record


def _done(out: Location, file: str, plan_hash: str) -> dict | None:
    """The progress record of a finished shard whose file still matches it, else None."""
    from hierclr.data.formats.parquet import sha256_of

    rec_loc, shard = out.join(PROGRESS_DIR, file + ".json"), out.join(file)
    if not (rec_loc.is_file() and shard.is_file()):
        return None
    try:
        rec = json.loads(rec_loc.read_text())
    except json.JSONDecodeError:
        return None
    if rec.get("plan") != plan_hash or sha256_of(shard) != rec.get("sha256"):
        return None
    return rec


# ----------------------------------------------------------------------------------------------- driver


def _run_tasks(fn, calls: list[tuple], window: int, on_done: Callable[[int, object], None], desc: str,
               in_process: bool = False) -> None:
    """Run ``fn(*args)`` for every call as a Ray task with at most ``window`` in flight, with a progress bar;
    ``in_process``: one after another in this process (small in-memory datasets, no Ray needed)."""
    if in_process:
        for i, args in enumerate(calls):
            on_done(i, fn(*args))
        return
    import ray
    from tqdm import tqdm

    fn = ray.remote(num_cpus=1, scheduling_strategy=OWN_RESOURCES)(fn)
    pending: dict = {}
    it = iter(enumerate(calls))
    with tqdm(total=len(calls), desc=desc, unit="task", disable=None) as bar:
        while True:
            while len(pending) < window:
                nxt = next(it, None)
                if nxt is None:
                    break
                pending[fn.remote(*nxt[1])] = nxt[0]
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            on_done(i, ray.get(done[0]))
            bar.update(1)


def prepare_split(plan: SplitPlan, out: Location, cfg: PrepareConfig, window: int, *,
                  in_process: bool = False) -> Manifest:
    """Convert one split into ``out``; ``in_process`` runs every task here instead of on Ray."""
    n = len(plan.keys)
    if n == 0:
        raise DataFormatError(f"split {plan.name} of {cfg.source} has no images")
    good = np.ones(n, bool)
    skipped: list[SkippedImage] = []
    if cfg.verify and not isinstance(plan.loader, ArrayLoader):
        chunks = [list(range(s, min(s + cfg.shard_size, n))) for s in range(0, n, cfg.shard_size)]
        reasons: dict[int, list] = {}
        _run_tasks(_scan, [(plan.loader, [plan.keys[i] for i in c], c) for c in chunks], window,
                   lambda i, r: reasons.__setitem__(i, r), f"scan {plan.name}", in_process)
        for c_i, chunk in enumerate(chunks):
            for i, reason in zip(chunk, reasons[c_i]):
                if reason is not None:
                    good[i] = False
                    skipped.append(SkippedImage(key=plan.keys[i], reason=reason))
        limit = int(cfg.max_bad_fraction * n)
        if len(skipped) > limit:
            shown = "; ".join(f"{s.key}: {s.reason}" for s in skipped[:5])
            raise DataFormatError(f"{len(skipped)} of {n} images in {cfg.source} split {plan.name} do not decode, more "
                                  f"than max_bad_fraction={cfg.max_bad_fraction} allows; first: {shown}")
        for s in skipped:
            log.warning("skipping undecodable image %s: %s", s.key, s.reason)
    idx = np.flatnonzero(good)
    if cfg.seed is not None:
        idx = idx[np.random.default_rng(cfg.seed).permutation(len(idx))]
    options = cfg.model_dump(mode="json", include={"shard_size", "reencode", "quality", "resize", "resize_mode",
                                                   "seed", "val_fraction", "subset_file"})
    calls, records = [], {}
    for s, start in enumerate(range(0, len(idx), cfg.shard_size)):
        part = idx[start : start + cfg.shard_size]
        file = f"part-{s:05d}.parquet"
        keys = [plan.keys[i] for i in part]
        labels = plan.labels[part].tolist()
        plan_hash = hashlib.sha256(json.dumps([options, start, keys, labels]).encode()).hexdigest()
        rec = _done(out, file, plan_hash)
        if rec is not None:
            records[s] = rec
            continue
        calls.append((s, (out, file, plan.loader, keys, part.tolist(), labels, start, cfg, plan_hash)))
    if records:  # a resumed conversion: said whatever the log level (the progress bar shows only what is left)
        print(f"prepare-data {plan.name}: resuming: {len(records)} of {len(records) + len(calls)} shards already "
              f"written and verified, kept; writing {len(calls)}", file=sys.stderr)
    _run_tasks(_write_shard, [c[1] for c in calls], window, lambda i, r: records.__setitem__(calls[i][0], r),
               f"write {plan.name}", in_process)
    recs = [records[s] for s in sorted(records)]
    count = sum(r["rows"] for r in recs)
    formats: dict[str, int] = {}
    for r in recs:
        for f, c in r["stats"]["formats"].items():
            formats[f] = formats.get(f, 0) + c
    stats = ImageStats(
        count=count,
        height=SizeStats(min=min(r["stats"]["h"][0] for r in recs), max=max(r["stats"]["h"][1] for r in recs),
                         mean=sum(r["stats"]["h"][2] for r in recs) / count),
        width=SizeStats(min=min(r["stats"]["w"][0] for r in recs), max=max(r["stats"]["w"][1] for r in recs),
                        mean=sum(r["stats"]["w"][2] for r in recs) / count),
        formats=dict(sorted(formats.items())),
    )
    manifest = Manifest(
        split=plan.name, num_rows=count, classes=plan.classes,
        hierarchy=plan.hierarchy.to_dict() if plan.hierarchy is not None else None,
        shards=tuple(ShardInfo(file=r["file"], rows=r["rows"], first_id=r["first_id"], bytes=r["bytes"],
                               sha256=r["sha256"]) for r in recs),
        image_stats=stats, skipped=tuple(skipped), source=cfg.source,
        options={**options, "hierclr": hierclr.__version__},
    )
    manifest.write(out)
    out.join(PROGRESS_DIR).remove_tree()  # the resume records: the manifest now holds what they held
    return manifest


def prepare_data(cfg: PrepareConfig) -> dict[str, Manifest]:
    """Convert every split of ``cfg.source`` under ``cfg.out``; returns the manifests by split name."""
    import ray

    from hierclr.runtime.ray_start import ensure_ray

    ensure_ray(cfg.num_cpus)
    window = 2 * (cfg.num_cpus or int(ray.cluster_resources().get("CPU", 1)))
    plans = plan_splits(cfg)
    out_root = resolve(cfg.out)
    manifests = {}
    for plan in plans:
        manifests[plan.name] = prepare_split(plan, out_root.join(plan.name), cfg, window)
    return manifests
