"""Images/s of the Ray Data train stream against a plain torch DataLoader doing the same work on the same files.

What it measures
    The *train stream* of :func:`hierclr.data.streams.train_stream`: read encoded bytes -> ``decode_rgb`` -> two
    MoCo v2 views (per-row seeded ``MultiViewAugment.crop``, batched per-row photometric ops, ``to_uint8``), consumed
    with ``ds.iter_torch_batches(batch_size=B)``, against ``torch.utils.data.DataLoader`` reading the same files with
    the same CPU budget (``num_workers=W`` vs ``ray.init(num_cpus=W)`` and ``StreamConfig(num_cpus=W)``).

    DataLoader rows (all ``shuffle=True``, ``batch_size=B``, ``num_workers=W``, map-style Dataset over the ImageFolder
    listing ``list_image_folder``; other formats use an IterableDataset over the source's read units):

    * ``dataloader`` - the fair comparison and the denominator of the ratio: ``__getitem__`` reads the bytes, decodes
      with ``decode_rgb`` and crops with ``MultiViewAugment.crop`` (same per-row generator as the stream), and the
      ``collate_fn`` - which runs *in the worker* - applies the batched photometric ops with the same per-row
      parameters (``row_photometric_params``) and ``to_uint8``. That is exactly the computation of one Ray task
      batch, so the ratio isolates the cost of the framework (scheduling, object store, block formatting) rather
      than comparing two augmentation implementations.
    * ``dataloader_per_sample`` - the same ops with the photometric stage per image (a batch of 1) in ``__getitem__``:
      shows what batching the photometric ops is worth.
    * ``dataloader_torchvision`` - reference: ``torchvision_pipeline(cfg)`` twice per decoded image (the classic
      per-image torchvision v2 path; output float32 normalised, so it also ships 4x the bytes per view).

    Each pipeline first runs a warm-up of ``--warmup-batches`` batches of a throwaway pass (it absorbs process start,
    imports and first-call costs; the time to its first batch is reported as the cold start-up, and for Ray the
    ``ray.init`` time is reported too). For Ray the warm-up pass is consumed to its end: abandoning a Ray Data
    iteration cancels its running tasks, which kills their worker processes, so the next pass would pay for new
    workers importing torch again (seconds per worker). Then comes one *full timed pass* over all images, from
    creating the iterator to the last batch: ``images/s = images / pass seconds``. Timing the whole pass (instead of
    from the k-th batch on) keeps output that a pipeline buffered ahead during the first batches from being counted in
    a window that did not pay for it; the within-pass rate after ``--warmup-batches`` batches is printed as ``steady``
    for reference. Every batch is touched (a strided sum over each tensor) so nothing stays lazy. All files are read
    once beforehand so both pipelines see a warm page cache.

    With ``--shuffle-buffer N`` (default: the training default, ``data.shuffle_buffer``) the Ray stream is also
    timed as a training worker reads it, through a local shuffle buffer of N rows (``train_batch_kwargs``), and both
    Ray rows report ``batch_overlap``: the mean share of a batch found inside one batch of the previous pass (two
    passes = two epochs; about 1 when batches are the same images every epoch). Measured on this 2-core machine
    (4000 CIFAR-10 JPEGs, batch 64): x0.965 images/s with N = 1024, overlap 0.06 vs 0.80 without.

How to run
    python benchmarks/input_pipeline.py                                   # synthetic 1000 ImageNet-like JPEGs
    python benchmarks/input_pipeline.py --synthetic-imagenet 1000 --workers 2 --also-parquet
    python benchmarks/input_pipeline.py --data /data/cifar10-jpg/train --preset cifar --images 10000

    ``--synthetic-imagenet N`` writes N JPEGs (random 300-500 x 300-500 px, quality 90, smooth random colour fields
    plus pixel noise: ~100 KB a file, like ImageNet) as a 10-class ImageFolder tree in a temp dir. ``--images N``
    keeps the first N files of the ImageFolder listing (a symlinked subset tree, so both pipelines and
    ``--also-parquet`` see the same files). ``--also-parquet`` converts the folder with ``prepare_data`` into
    parquet shards of ``--parquet-shard-size`` rows in a temp dir and times the Ray stream on them too.

How to read the ratio
    ``ratio_ray_over_dataloader`` = Ray images/s / ``dataloader`` images/s with the same nominal CPU count;
    >= 1 means the Ray stream is at least as fast. ``ratio_per_cpu`` divides each rate by the CPU time its process
    tree actually used during the timed pass (driver + Ray daemons + Ray workers, or main process + DataLoader
    workers; read from /proc, Linux only - otherwise it equals the plain ratio, the nominal CPU budgets being
    equal). The target is ``ratio_per_cpu >= 1``. Before each timed pass the benchmark waits (``--quiet-wait``) for
    other processes on the host to go idle; ``other cores`` in the table is how many cores something else kept busy
    during the pass - well above 0 means the wall-clock rates of that row are noisy (the per-CPU rates less so).
    The last line of output is one JSON object with the headline numbers.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from hierclr.config.sections import DataSection
from hierclr.data.decode import decode_rgb
from hierclr.data.formats.image_folder import list_image_folder, read_folder_unit
from hierclr.data.formats.parquet import read_parquet_unit
from hierclr.data.formats.webdataset import read_tar_unit
from hierclr.data.source import ShardSource, open_source
from hierclr.data.streams import (
    CROP_STAGE,
    StreamConfig,
    row_photometric_params,
    row_rng,
    train_batch_kwargs,
    train_stream,
)
from hierclr.data.transforms import (
    AugmentConfig,
    MultiViewAugment,
    TransformConfig,
    apply_photometric,
    torchvision_pipeline,
)
from hierclr.io.fs import resolve

Mode = Literal["collate", "per_sample", "torchvision"]
SEED = 0
EPOCH = 0
_SINK = 0.0  # touch() accumulates here
_QUIET_WAIT_S = 60.0  # --quiet-wait
_UNIT_READERS = {"folder": read_folder_unit, "tar": read_tar_unit, "parquet": read_parquet_unit}


# --------------------------------------------------------------------------------------------------- data


def write_synthetic_imagenet(root: Path, n: int, num_classes: int = 10, seed: int = 0) -> None:
    """``n`` ImageNet-sized JPEGs (quality 90) in ``root/class_XX/``: smooth random colours plus pixel noise."""
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(300, 501, size=2))
        coarse = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
        pixels = np.clip(smooth + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"class_{i % num_classes:02d}" / f"{i:07d}.JPEG", quality=90)


def subset_image_folder(src: str, dst: Path, n: int) -> int:
    """Symlink the first ``n`` files of ``src``'s ImageFolder listing into ``dst`` (same relative paths)."""
    listing = list_image_folder(resolve(src))
    keys = listing.keys[:n]
    for key in keys:
        target = dst / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(posixpath.join(listing.location.path, key), target)
    return len(keys)


def warm_page_cache(source: ShardSource) -> int:
    """Read every byte of the source once (so neither pipeline pays for cold disk reads)."""
    total = 0
    for loc in (source.location.join(s.file) for s in source.manifest.shards) if source.manifest else ():
        total += len(loc.read_bytes())
    if source.format == "imagefolder":
        listing = list_image_folder(source.location)
        fs = listing.location.filesystem
        for key in listing.keys:
            with fs.open_input_stream(posixpath.join(listing.location.path, key)) as f:
                total += len(f.read())
    elif source.format == "webdataset":
        for unit in {json.loads(u).get("path", "") for u in source.units} - {""}:
            with source.location.filesystem.open_input_stream(unit) as f:
                total += len(f.read())
    return total


# --------------------------------------------------------------------------------------------------- DataLoader


class _Views:
    """Per-sample work of one DataLoader mode (picklable, so it also works with spawned workers)."""

    def __init__(self, transforms: TransformConfig, mode: Mode) -> None:
        self.cfg: AugmentConfig = transforms.train
        self.mode = mode
        self.aug = MultiViewAugment(self.cfg)
        self.tv = torchvision_pipeline(self.cfg) if mode == "torchvision" else None

    def sample(self, data: bytes, row_id: int, label: int) -> dict[str, Any]:
        img = decode_rgb(data)
        out: dict[str, Any] = {"id": row_id, "label": label}
        if self.mode == "torchvision":
            assert self.tv is not None
            for v in range(2):
                out[f"view{v}"] = self.tv(img)
            return out
        crops = self.aug.crop(img, row_rng(SEED, EPOCH, row_id, CROP_STAGE))
        if self.mode == "collate":
            out["crops"] = crops
            return out
        params = row_photometric_params([row_id], self.aug.num_views, self.cfg, SEED, EPOCH)
        for v, crop in enumerate(crops):
            out[f"view{v}"] = self.aug.to_uint8(apply_photometric(crop[None], params[v], self.cfg))[0]
        return out


class PhotometricCollate:
    """collate_fn of the ``collate`` mode (runs in the worker): stack crops, batched per-row photometric, uint8."""

    def __init__(self, transforms: TransformConfig) -> None:
        self.cfg = transforms.train
        self.aug = MultiViewAugment(self.cfg)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [s["id"] for s in samples]
        params = row_photometric_params(ids, self.aug.num_views, self.cfg, SEED, EPOCH)
        out = {"id": torch.as_tensor(ids, dtype=torch.int64),
               "label": torch.as_tensor([s["label"] for s in samples], dtype=torch.int64)}
        for v in range(self.aug.num_views):
            x = torch.stack([s["crops"][v] for s in samples])
            out[f"view{v}"] = self.aug.to_uint8(apply_photometric(x, params[v], self.cfg))
        return out


class FolderDataset(Dataset):
    """Map-style dataset over an ImageFolder listing; item i is the image with stream id i."""

    def __init__(self, source: ShardSource, views: _Views) -> None:
        listing = list_image_folder(source.location)
        self.fs = listing.location.filesystem
        self.paths = [posixpath.join(listing.location.path, k) for k in listing.keys]
        self.labels = listing.labels.tolist()
        self.views = views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with self.fs.open_input_stream(self.paths[i]) as f:
            data = f.read()
        return self.views.sample(data, i, self.labels[i])


class UnitDataset(IterableDataset):
    """Iterable dataset over the source's read units (parquet shards, tar shards), dealt round-robin to workers."""

    def __init__(self, source: ShardSource, views: _Views, seed: int = 0) -> None:
        self.fs = source.location.filesystem
        self.units = list(source.units)
        self.views = views
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = np.random.default_rng(self.seed).permutation(len(self.units))
        for u in order[wid::nw]:
            unit = json.loads(self.units[u])
            rows = _UNIT_READERS[unit["kind"]](unit, self.fs)
            for data, row_id, label in zip(rows["image"], rows["id"], rows["label"]):
                yield self.views.sample(data, int(row_id), int(label))


def make_dataloader(source: ShardSource, transforms: TransformConfig, mode: Mode, workers: int, batch_size: int,
                    persistent: bool) -> DataLoader:
    """``persistent=True`` for the timed pass: the workers outlive the last batch, so their CPU time can be read."""
    views = _Views(transforms, mode)
    collate = PhotometricCollate(transforms) if mode == "collate" else None
    common: dict[str, Any] = {"batch_size": batch_size, "num_workers": workers, "collate_fn": collate,
                              "persistent_workers": persistent and workers > 0}
    if source.format == "imagefolder":
        return DataLoader(FolderDataset(source, views), shuffle=True,
                          generator=torch.Generator().manual_seed(SEED), **common)
    return DataLoader(UnitDataset(source, views), **common)


# --------------------------------------------------------------------------------------------------- measuring


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime in clock ticks) from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()  # fields after "(comm)": state ppid ... utime(11) stime(12)
        table[int(name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return table


def tree_cpu_seconds(root: int | None = None) -> float | None:
    """CPU seconds used so far by ``root`` (this process) and all its live descendants; None off Linux."""
    if not os.path.isdir("/proc"):
        return None
    root = os.getpid() if root is None else root
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0))[1]
        todo.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole host (all cores) so far; None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet_host(max_wait_s: float, max_other_cores: float = 0.25, max_own_cores: float = 0.3) -> None:
    """Wait (up to ``max_wait_s``) until, over 1 s, processes outside this tree use < ``max_other_cores`` cores and
    this tree (left-over work of a warm-up pass) < ``max_own_cores``. No-op off Linux."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        m0, c0 = machine_cpu_seconds(), tree_cpu_seconds()
        time.sleep(1.0)
        m1, c1 = machine_cpu_seconds(), tree_cpu_seconds()
        if m0 is None or m1 is None or c0 is None or c1 is None:
            return
        if (m1 - m0) - (c1 - c0) < max_other_cores and c1 - c0 < max_own_cores:
            return


def touch(batch: dict[str, Any] | Any) -> int:
    """Read a strided sample of every tensor in the batch; returns the number of images in it."""
    global _SINK
    for value in batch.values():
        _SINK += float(torch.as_tensor(value).reshape(-1)[::4093].sum())
    return len(batch["view0"])


def _delta(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else end - start


@dataclass
class Result:
    name: str
    images: int
    pass_s: float
    steady_images_per_s: float | None
    cpu_s: float | None
    machine_cpu_s: float | None
    cold_first_batch_s: float
    extra_startup_s: float = 0.0  # ray.init
    batch_overlap: float | None = None  # Ray rows: batch_overlap of the warm-up and the timed pass (two epochs)

    @property
    def images_per_s(self) -> float:
        return self.images / self.pass_s

    @property
    def other_cores(self) -> float | None:
        """Cores kept busy by processes outside this benchmark during the pass (noise indicator)."""
        if self.machine_cpu_s is None or self.cpu_s is None:
            return None
        return max(self.machine_cpu_s - self.cpu_s, 0.0) / self.pass_s

    @property
    def images_per_cpu_s(self) -> float | None:
        return self.images / self.cpu_s if self.cpu_s else None


def warm_up(make_iter: Callable[[], Iterable[Any]], batches: int, drain: bool = False) -> float:
    """Consume ``max(batches, 1)`` batches of a throwaway pass (all of it with ``drain``); returns the seconds to
    its first batch."""
    t0 = time.perf_counter()
    first = None
    it = iter(make_iter())
    for i, batch in enumerate(it):
        touch(batch)
        if i == 0:
            first = time.perf_counter() - t0
        if i + 1 >= max(batches, 1) and not drain:
            break
    del it
    gc.collect()
    return first if first is not None else time.perf_counter() - t0


def timed_pass(name: str, make_iter: Callable[[], Iterable[Any]], warmup_batches: int, cold_first: float,
               extra_startup_s: float = 0.0) -> Result:
    """One full pass from iterator creation to the last batch."""
    wait_for_quiet_host(_QUIET_WAIT_S)
    cpu0, mach0 = tree_cpu_seconds(), machine_cpu_seconds()
    t0 = time.perf_counter()
    n, tw, nw = 0, None, 0
    for i, batch in enumerate(make_iter()):
        n += touch(batch)
        if i + 1 == warmup_batches:
            tw, nw = time.perf_counter(), n
    t1 = time.perf_counter()
    cpu1, mach1 = tree_cpu_seconds(), machine_cpu_seconds()
    steady = (n - nw) / (t1 - tw) if tw is not None and t1 > tw and n > nw else None
    return Result(name, n, t1 - t0, steady, _delta(cpu1, cpu0), _delta(mach1, mach0), cold_first, extra_startup_s)


def run_dataloader(name: str, source: ShardSource, transforms: TransformConfig, mode: Mode,
                   args: argparse.Namespace) -> Result:
    # warm-up loader: not persistent, so abandoning it kills its workers with their prefetched work
    cold = warm_up(lambda: make_dataloader(source, transforms, mode, args.workers, args.batch_size, persistent=False),
                   args.warmup_batches)
    loader = make_dataloader(source, transforms, mode, args.workers, args.batch_size, persistent=True)
    result = timed_pass(name, loader.__iter__, args.warmup_batches, cold)
    del loader
    gc.collect()
    return result


def _wait_ray_idle(cpus: int, timeout_s: float = 60.0) -> None:
    """Wait until all CPUs are free again (no task of the warm-up pass still running) before the timed pass."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0.0) < cpus:
        time.sleep(0.05)


def batch_overlap(first: list[set[int]], second: list[set[int]]) -> float:
    """How much the batches of one pass repeat those of another: the mean over ``second``'s batches of the
    largest share of a batch found inside one batch of ``first`` (1.0: the same batches every epoch; about
    batch / images for batches drawn at random)."""
    if not first or not second:
        return float("nan")
    return float(np.mean([max(len(b & a) for a in first) / len(b) for b in second]))


def run_ray(name: str, source: ShardSource, transforms: TransformConfig, args: argparse.Namespace,
            ray_init_s: float, shuffle_buffer: int = 0) -> Result:
    """The train stream as a training worker consumes it: ``iter_torch_batches`` with the worker's
    ``train_batch_kwargs`` (a local shuffle buffer of ``shuffle_buffer`` rows, or none)."""
    cfg = StreamConfig(transforms=transforms, batch_size=args.batch_size, num_cpus=args.workers, seed=SEED)
    stream = train_stream(source, cfg)
    ds = stream.dataset
    passes: list[list[set[int]]] = []

    def make() -> Iterable[Any]:
        ids: list[set[int]] = []
        passes.append(ids)
        kwargs = train_batch_kwargs(shuffle_buffer, SEED, len(passes), 0)
        for batch in ds.iter_torch_batches(batch_size=args.batch_size, **kwargs):
            ids.append(set(batch["id"].tolist()))
            yield batch

    # drained: abandoning a Ray Data iteration cancels its running tasks, which kills their worker processes, and
    # the timed pass would then pay for starting new workers (and importing torch in them) again
    cold = warm_up(make, args.warmup_batches, drain=True)
    _wait_ray_idle(args.workers)
    result = timed_pass(name, make, args.warmup_batches, cold, ray_init_s)
    result.batch_overlap = batch_overlap(passes[0], passes[1])
    if args.ray_stats:
        print(ds.stats())
    bad = stream.bad_images()
    if bad:
        print(f"{name}: {len(bad)} undecodable images skipped")
    return result


# --------------------------------------------------------------------------------------------------- main


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[Result], workers: int) -> None:
    head = (f"{'pipeline':<26}{'images':>8}{'pass s':>9}{'img/s':>9}{'img/s/cpu':>11}{'steady':>9}"
            f"{'tree CPU-s':>12}{'img/CPU-s':>11}{'other cores':>13}  {'cold start s'}")
    print(head)
    print("-" * len(head))
    for r in results:
        cold = f"{r.cold_first_batch_s:.2f}" + (f" (+init {r.extra_startup_s:.2f})" if r.extra_startup_s else "")
        print(f"{r.name:<26}{r.images:>8}{r.pass_s:>9.2f}{r.images_per_s:>9.1f}{r.images_per_s / workers:>11.1f}"
              f"{_fmt(r.steady_images_per_s):>9}{_fmt(r.cpu_s, '.2f'):>12}{_fmt(r.images_per_cpu_s):>11}"
              f"{_fmt(r.other_cores, '.2f'):>13}  {cold}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ImageFolder dir, WebDataset tars or prepared parquet dir (or URI)")
    ap.add_argument("--format", default="auto", choices=["auto", "parquet", "webdataset", "imagefolder"])
    ap.add_argument("--preset", default="imagenet", choices=["imagenet", "cifar"])
    ap.add_argument("--workers", type=int, default=2, help="DataLoader num_workers = Ray num_cpus")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=None, help="only the first N files of the ImageFolder listing")
    ap.add_argument("--warmup-batches", type=int, default=2)
    ap.add_argument("--synthetic-imagenet", type=int, default=None, metavar="N",
                    help="write N ImageNet-like JPEGs to a temp ImageFolder and use it (default 1000 without --data)")
    ap.add_argument("--also-parquet", action="store_true", help="also time the Ray stream on prepare_data shards")
    ap.add_argument("--parquet-shard-size", type=int, default=256, help="rows per parquet shard for --also-parquet")
    ap.add_argument("--skip", default="", help="comma list of rows to skip: per_sample,torchvision")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each timed pass wait up to this many seconds for other processes to go idle")
    ap.add_argument("--ray-stats", action="store_true", help="print ds.stats() after each Ray pass")
    ap.add_argument("--shuffle-buffer", type=int, default=DataSection().shuffle_buffer,
                    help="also time the Ray stream with this local shuffle buffer (the training default; 0: skip)")
    args = ap.parse_args()
    if args.data is None and args.synthetic_imagenet is None:
        args.synthetic_imagenet = 1000
    skip = {s for s in args.skip.split(",") if s}
    global _QUIET_WAIT_S
    _QUIET_WAIT_S = args.quiet_wait

    tmp = Path(tempfile.mkdtemp(prefix="hierclr-input-bench-"))
    try:
        data = args.data
        if args.synthetic_imagenet is not None:
            data = str(tmp / "synthetic")
            t = time.perf_counter()
            write_synthetic_imagenet(Path(data), args.synthetic_imagenet)
            print(f"wrote {args.synthetic_imagenet} synthetic JPEGs to {data} in {time.perf_counter() - t:.1f}s")
        if args.images is not None:
            if open_source(data, format=args.format).format != "imagefolder":
                raise SystemExit("--images needs an ImageFolder source")
            subset = tmp / "subset"
            n = subset_image_folder(data, subset, args.images)
            print(f"using the first {n} files of the listing of {data} (symlinked under {subset})")
            data = str(subset)

        source = open_source(data, format=args.format)
        transforms = TransformConfig.preset(args.preset)
        nbytes = warm_page_cache(source)
        print(f"source: {source.format}, {source.num_rows} images, {nbytes / 2**20:.1f} MiB encoded, "
              f"preset {args.preset}, {args.workers} workers, batch {args.batch_size}, torch {torch.__version__}")

        # DataLoaders first: they fork, which should happen before Ray starts its threads in this process.
        results = [run_dataloader("dataloader", source, transforms, "collate", args)]
        if "per_sample" not in skip:
            results.append(run_dataloader("dataloader_per_sample", source, transforms, "per_sample", args))
        if "torchvision" not in skip:
            results.append(run_dataloader("dataloader_torchvision", source, transforms, "torchvision", args))

        import ray
        import ray.data

        from hierclr.runtime.ray_start import ensure_ray

        t = time.perf_counter()
        ensure_ray(args.workers)
        ray_init_s = time.perf_counter() - t
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_result = run_ray(f"ray_data ({source.format})", source, transforms, args, ray_init_s)
        results.insert(0, ray_result)
        shuffled = None
        if args.shuffle_buffer:
            shuffled = run_ray(f"ray_data shuffle {args.shuffle_buffer}", source, transforms, args, 0.0,
                               shuffle_buffer=args.shuffle_buffer)
            results.insert(1, shuffled)

        if args.also_parquet:
            from hierclr.data.prepare import PrepareConfig, prepare_data

            if source.format != "imagefolder":
                raise SystemExit("--also-parquet needs an ImageFolder source")
            t = time.perf_counter()
            prepare_data(PrepareConfig(source=data, out=str(tmp / "parquet"), shard_size=args.parquet_shard_size,
                                       verify=False, num_cpus=args.workers))
            print(f"prepare_data: {time.perf_counter() - t:.1f}s -> {tmp / 'parquet' / 'train'}")
            pq_source = open_source(str(tmp / "parquet" / "train"), format="parquet")
            warm_page_cache(pq_source)
            results.insert(1, run_ray("ray_data (parquet)", pq_source, transforms, args, 0.0))
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print_table(results, args.workers)
    by_name = {r.name: r for r in results}
    dl = by_name["dataloader"]
    tv = by_name.get("dataloader_torchvision")
    ratio = ray_result.images_per_s / dl.images_per_s
    per_cpu = (ray_result.images_per_cpu_s / dl.images_per_cpu_s
               if ray_result.images_per_cpu_s and dl.images_per_cpu_s else ratio)
    summary: dict[str, Any] = {
        "ray_data_images_per_s": round(ray_result.images_per_s, 2),
        "dataloader_images_per_s": round(dl.images_per_s, 2),
        "dataloader_torchvision_images_per_s": round(tv.images_per_s, 2) if tv else None,
        "ratio_ray_over_dataloader": round(ratio, 3),
        "ratio_per_cpu": round(per_cpu, 3),
        "workers": args.workers,
        "images": ray_result.images,
        "preset": args.preset,
        "data": args.data if args.data is not None else f"synthetic-imagenet:{args.synthetic_imagenet}",
    }
    summary["batch_overlap"] = round(ray_result.batch_overlap, 3)
    if shuffled is not None:
        summary.update({"shuffle_buffer": args.shuffle_buffer,
                        "shuffle_images_per_s": round(shuffled.images_per_s, 2),
                        "shuffle_over_plain": round(shuffled.images_per_s / ray_result.images_per_s, 3),
                        "shuffle_batch_overlap": round(shuffled.batch_overlap, 3)})
        print(f"local shuffle buffer {args.shuffle_buffer}: {shuffled.images_per_s:.1f} img/s vs "
              f"{ray_result.images_per_s:.1f} without (x{shuffled.images_per_s / ray_result.images_per_s:.3f}); "
              f"batches repeated across two epochs: {shuffled.batch_overlap:.3f} vs {ray_result.batch_overlap:.3f}")
    if "ray_data (parquet)" in by_name:
        summary["ray_data_parquet_images_per_s"] = round(by_name["ray_data (parquet)"].images_per_s, 2)
    print(f"\nratio Ray/DataLoader: {ratio:.3f} (same {args.workers} CPUs), per CPU-second used: {per_cpu:.3f} "
          f"-> target ratio_per_cpu >= 1 {'met' if per_cpu >= 1 else 'NOT met'}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
