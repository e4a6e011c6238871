"""``builtin://<name>/<split>``: small datasets that ship with a dependency, written once as native parquet.

``builtin://digits/{train,val}`` is scikit-learn's bundled handwritten digits (:func:`sklearn.datasets.load_digits`:
1797 8x8 images with intensities 0..16, classes ``"0".."9"``) rendered to 32x32 RGB PNG, so the ``demo`` preset runs
anywhere without a download. The first use writes a real ``prepare-data`` dataset (parquet shards + ``manifest.json``
per split, through :func:`hierclr.data.prepare.prepare_split`, in-process, no Ray needed) under
``<cache_dir>/<name>/``; later uses verify it (manifests, row counts, shard sizes and sha256) and reuse it.

Concurrency: a build goes to a temporary sibling directory that is renamed into place in one step, so a reader never
sees a half-written dataset; when two processes race, the loser of the rename uses the winner's (byte-identical) copy.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hierclr.data.manifest import MANIFEST_NAME, Manifest
from hierclr.data.prepare import ArrayLoader, PrepareConfig, SplitPlan, prepare_split
from hierclr.io.errors import DataFormatError
from hierclr.io.fs import resolve
from hierclr.labels.hierarchy import LabelHierarchy

__all__ = ["BUILTIN_DATASETS", "BUILTIN_SCHEME", "DIGITS_ROWS", "digits_hierarchy", "is_builtin", "materialize_builtin",
           "render_digits"]

log = logging.getLogger(__name__)

BUILTIN_SCHEME = "builtin://"
DIGITS_SIZE = 32
DIGITS_VAL_FRACTION = 0.2
DIGITS_SEED = 0
DIGITS_ROWS = {"train": 1438, "val": 359}  # per-class round(0.2 * n_c) go to val
# digit -> shape group (level 1 of the hierarchy): closed loops, straight strokes, open curves
DIGITS_GROUPS = ("loopy", "straight", "curvy")
DIGITS_GROUP_OF = (0, 1, 2, 2, 1, 2, 0, 1, 0, 0)
_DIGITS_VERSION = 1  # bump when the rendering or split changes: old caches are then rebuilt
_MAX_SHARD_ROWS = 256

BUILTIN_DATASETS: dict[str, str] = {
    "digits": (f"scikit-learn's 1797 handwritten digits (8x8, 0..16) upsampled bilinearly to {DIGITS_SIZE}x"
               f"{DIGITS_SIZE} RGB PNG, white on black; classes '0'..'9' under shape groups {DIGITS_GROUPS}; "
               f"stratified seeded split train={DIGITS_ROWS['train']} / val={DIGITS_ROWS['val']}"),
}


@dataclass(frozen=True)
class _Builtin:
    source: str  # written into every manifest: a cache from another version does not validate
    rows: dict[str, int]  # split -> row count
    plans: Callable[[], list[SplitPlan]]


def is_builtin(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names a built-in dataset (``builtin://...``)."""
    return isinstance(uri, str) and uri.startswith(BUILTIN_SCHEME)


def materialize_builtin(uri: str, cache_dir: str | os.PathLike) -> str:
    """The local directory of ``builtin://<name>/<split>`` (``<cache_dir>/<name>/<split>``), written on first use.

    An existing copy is reused when every split's manifest, row count and shard (size, sha256) checks out; an
    incomplete or damaged one is rebuilt. Safe to call from several processes at once.

    Raises:
        DataFormatError (a ``ValueError``): not a ``builtin://`` URI, or an unknown dataset or split.
    """
    name, split = _parse(uri)
    spec = _registry()[name]
    cache = Path(os.path.expanduser(os.fspath(cache_dir))).absolute()
    target = cache / name
    if not _complete(target, spec):
        cache.mkdir(parents=True, exist_ok=True)
        _build(target, spec)
    return str(target / split)


# ----------------------------------------------------------------------------------------------- the cache


def _parse(uri: str) -> tuple[str, str]:
    if not is_builtin(uri):
        raise DataFormatError(f"not a builtin dataset URI: {uri!r} (expected {BUILTIN_SCHEME}<name>/<split>)")
    parts = uri[len(BUILTIN_SCHEME):].strip("/").split("/")
    available = ", ".join(f"{BUILTIN_SCHEME}{n}/{s}" for n, spec in _registry().items() for s in spec.rows)
    if parts[0] not in _registry():
        raise DataFormatError(f"unknown builtin dataset {parts[0]!r} in {uri!r}; available: {available}")
    spec = _registry()[parts[0]]
    if len(parts) != 2 or parts[1] not in spec.rows:
        raise DataFormatError(f"{uri!r} names no split of builtin dataset {parts[0]!r} (splits: "
                              f"{', '.join(spec.rows)}); available: {available}")
    return parts[0], parts[1]


def _complete(root: Path, spec: _Builtin) -> bool:
    """Whether ``root`` holds every split, as this version writes it, with intact shards."""
    from hierclr.data.formats.parquet import sha256_of

    for split, rows in spec.rows.items():
        loc = resolve(root / split)
        if not loc.join(MANIFEST_NAME).is_file():
            return False
        try:
            m = Manifest.read(loc)
        except DataFormatError:
            return False
        if m.split != split or m.num_rows != rows or m.source != spec.source:
            return False
        for s in m.shards:
            shard = loc.join(s.file)
            info = shard.filesystem.get_file_info(shard.path)
            if info.size != s.bytes or sha256_of(shard) != s.sha256:
                return False
    return True


def _build(target: Path, spec: _Builtin) -> None:
    """Write every split into a temporary sibling of ``target``, then rename it into place."""
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        for plan in spec.plans():
            n = len(plan.keys)
            shard_size = math.ceil(n / math.ceil(n / _MAX_SHARD_ROWS))  # equal shards, e.g. 6 x 240 for 1438
            cfg = PrepareConfig(source=spec.source, out=str(tmp), shard_size=shard_size, seed=DIGITS_SEED,
                                verify=False)
            prepare_split(plan, resolve(tmp / plan.name), cfg, window=1, in_process=True)
        _install(tmp, target, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote builtin dataset %s", target)


def _install(tmp: Path, target: Path, spec: _Builtin) -> None:
    """Atomically move ``tmp`` to ``target``; a complete ``target`` written meanwhile by another process wins, a
    damaged one is moved aside (atomically) and replaced."""
    error: OSError | None = None
    for _ in range(5):
        try:
            os.rename(tmp, target)  # replaces an empty directory, fails on a non-empty one
            return
        except OSError as e:
            error = e
            if not target.exists():
                continue
        if _complete(target, spec):
            return  # lost the race: the winner's copy is identical
        stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(target, stale)
        except FileNotFoundError:
            continue  # another process moved it already
        shutil.rmtree(stale, ignore_errors=True)
    raise DataFormatError(f"could not install the builtin dataset at {target}: {error}") from error


# ----------------------------------------------------------------------------------------------- digits


def render_digits(images: np.ndarray, size: int = DIGITS_SIZE) -> np.ndarray:
    """``(N, 8, 8)`` intensities 0..16 -> ``(N, size, size, 3)`` uint8, white digit on black.

    Bilinear upsampling with pixel-centre alignment (output pixel ``o`` samples input position
    ``(o + 0.5) * 8 / size - 0.5``, clamped to the border), of the intensities scaled to 0..255, rounded half to
    even. For ``size = 32`` all weights are multiples of 1/8, so the float64 result is exact and any correct
    bilinear implementation gives the same bytes.
    """
    x = np.asarray(images, dtype=np.float64) * (255.0 / 16.0)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise ValueError(f"expected (N, 8, 8) digit images, got shape {x.shape}")
    lo, hi, w = _bilinear_taps(8, size)
    x = x[:, lo, :] * (1 - w)[:, None] + x[:, hi, :] * w[:, None]  # rows
    x = x[:, :, lo] * (1 - w) + x[:, :, hi] * w  # columns
    gray = np.rint(x).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=3)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: the two input indices and the weight of the second."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def _digits_split(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Seeded, stratified: ``round(0.2 * n_c)`` random images of each class c go to val; sorted indices."""
    rng = np.random.default_rng(DIGITS_SEED)
    val = []
    for c in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == c)
        val.append(rng.permutation(idx)[: round(DIGITS_VAL_FRACTION * len(idx))])
    is_val = np.zeros(len(labels), bool)
    is_val[np.concatenate(val)] = True
    return {"train": np.flatnonzero(~is_val), "val": np.flatnonzero(is_val)}


def digits_hierarchy() -> LabelHierarchy:
    """Digit -> shape group (``loopy`` 0 6 8 9, ``straight`` 1 4 7, ``curvy`` 2 3 5)."""
    return LabelHierarchy(names=(tuple(str(d) for d in range(10)), DIGITS_GROUPS), parents=(DIGITS_GROUP_OF,),
                          level_names=("digit", "shape"))


def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """All digits rendered (``(1797, 32, 32, 3)`` uint8), their labels, and the split's indices."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = render_digits(digits.images), digits.target.astype(np.int64)
    return images, labels, _digits_split(labels)


def digits_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The rendered images ``(N, 32, 32, 3)`` uint8 and labels of one split of ``builtin://digits``, in row order
    (what the shards hold, without decoding them)."""
    images, labels, splits = _digits()
    if split not in splits:
        raise ValueError(f"builtin digits has splits {sorted(splits)}, not {split!r}")
    return images[splits[split]], labels[splits[split]]


def _digits_plans() -> list[SplitPlan]:
    images, labels, splits = _digits()
    hierarchy = digits_hierarchy()
    plans = []
    for split, idx in splits.items():
        if len(idx) != DIGITS_ROWS[split]:  # scikit-learn changed the data set
            raise DataFormatError(f"builtin digits: {split} has {len(idx)} images, expected {DIGITS_ROWS[split]}")
        keys = [f"digit_{i:04d}" for i in idx]  # the index in load_digits()
        plans.append(SplitPlan(split, keys, labels[idx], hierarchy.names[0], hierarchy,
                               ArrayLoader(np.ascontiguousarray(images[idx]))))
    return plans


def _registry() -> dict[str, _Builtin]:
    return {"digits": _Builtin(f"sklearn.datasets.load_digits (hierclr builtin digits v{_DIGITS_VERSION})",
                               DIGITS_ROWS, _digits_plans)}
