"""GPU acceptance run: one command that checks and times what a first GPU machine must show.

Parts (each in its own subprocess with a timeout, so a hang or crash costs only that part):
  environment  torch / CUDA / GPU / faiss (GPU?) / Ray / MLflow versions
  train_step   the real HCSC step (``hcsc_train_step``) vs MoCo v2 at the official sizes (prototypes
               3000-2000-1000, queue 16384, dim 128): ResNet-50 224 px at batch 32 and 64, ResNet-18 32 px
               (CIFAR stem) at 256, AMP bf16 + channels_last off and on; ms/step, images/s, HCSC/MoCo ratio,
               peak memory
  kmeans       hierarchical K-means of 1,281,167 x 128 unit vectors into 3000-2000-1000 (niter 20, nredo 5):
               torch backend on the GPU, faiss GPU (when installed), distributed Lloyd through the clustering
               service with two Ray actors sharing the GPU; seconds and objective on the same data and seeds
  augment      decode + crop + colour ops on the CPU (``augment_on: cpu``) vs colour ops on the GPU
               (``augment_on: device``) on JPEGs (``--jpeg-dir`` or generated ones)
  end_to_end   ``python -m hierclr.cli prepare-data`` / ``pretrain`` (1 GPU worker, clustering actor sharing
               the GPU, 2 epochs with 1 warm-up, local MLflow) / ``evaluate --protocols knn``

    python benchmarks/gpu_acceptance.py --out /tmp/gpu_acceptance            # on the GPU machine (<= 8 min)
    python benchmarks/gpu_acceptance.py --out /tmp/gpu_acceptance --smoke    # toy sizes on the CPU (~3 min on 2 cores)

Writes ``OUT/gpu_acceptance.json`` after every part (a killed run keeps the finished parts; each part also
keeps its partial results in ``OUT/parts/<part>.json``) and ``OUT/gpu_acceptance.txt`` (also printed).
Child logs: ``OUT/logs/<part>.log``; the end-to-end run's shards, checkpoints and MLflow store go to ``--work-dir``
(default: a new temp dir). Ratios are against a baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("environment", "train_step", "kmeans", "augment", "end_to_end")
# Seconds per part (GPU run, smoke run); a part also never runs past the overall --budget-s. On the H200
# (2026-12-04) the first four parts took 117 s and the end-to-end commands about 35 s (prepare-data), 145 s
# (pretrain) and more than 128 s (evaluate, cut off): end_to_end gets what is left of the 480 s default.
TIMEOUTS = {"environment": (60, 60), "train_step": (130, 60), "kmeans": (140, 60), "augment": (45, 40),
            "end_to_end": (360, 270)}
# Share of the end-to-end part's remaining time each command may use: pretrain leaves evaluate about as long as
# it took itself (both are mostly Ray, Ray Train and CUDA start-up at these sizes).
E2E_SHARES = {"prepare_data": 0.25, "pretrain": 0.6, "evaluate": 0.95}


# ------------------------------------------------------------------------------------------------- helpers
def _write_json(path: Path, data: dict) -> None:
    """Atomic rewrite: a reader (or a killed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=True))
    os.replace(tmp, path)


class Recorder(dict):
    """A dict that saves itself to its JSON file on every assignment."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        _write_json(self.path, dict(self))


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _run(cmd: list[str], timeout: float, log: Path) -> tuple[int | None, str, float]:
    """Run ``cmd`` in its own process group; kill the whole group at ``timeout``. Returns
    ``(returncode or None on timeout, stdout, seconds)``; stdout + stderr are appended to ``log``."""
    t0 = time.perf_counter()
    with open(log, "a") as lf:
        lf.write(f"\n$ {' '.join(cmd)}\n")
        lf.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(), stdout=subprocess.PIPE, stderr=lf, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            out, rc = (proc.stdout.read() if proc.stdout else ""), None
        lf.write(out or "")
    return rc, out or "", time.perf_counter() - t0


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


# ---------------------------------------------------------------------------------------------- the parts
def part_environment(rec: Recorder, args) -> None:
    import torch

    rec["python"] = platform.python_version()
    rec["torch"] = torch.__version__
    rec["cuda_runtime"] = torch.version.cuda
    rec["cuda_available"] = torch.cuda.is_available()
    rec["cpu_count"] = os.cpu_count()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rec["gpu"] = {"name": p.name, "count": torch.cuda.device_count(), "memory_gib": round(p.total_memory / 2**30, 1),
                      "capability": f"{p.major}.{p.minor}", "cudnn": torch.backends.cudnn.version()}
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        rec["faiss"] = {"version": faiss.__version__, "gpu_build": hasattr(faiss, "StandardGpuResources"),
                        "num_gpus": gpus}
    except Exception as e:  # noqa: BLE001 -- record and go on
        rec["faiss"] = f"absent ({_error(e)})"
    from importlib import metadata

    for mod, dist in (("ray", "ray"), ("mlflow", "mlflow-skinny"), ("torchvision", "torchvision")):
        try:  # metadata first: importing Ray or MLflow only for a version string costs seconds
            rec[mod] = metadata.version(dist) if dist != "mlflow-skinny" else _mlflow_version(metadata)
        except Exception:  # noqa: BLE001
            try:
                rec[mod] = __import__(mod).__version__
            except Exception as e:  # noqa: BLE001
                rec[mod] = f"absent ({_error(e)})"
    try:
        rec["hierclr_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO,
                                               capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        rec["hierclr_commit"] = "unknown"


def _mlflow_version(metadata) -> str:
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise metadata.PackageNotFoundError("mlflow")


def part_train_step(rec: Recorder, args) -> None:
    import torch
    from bench_train_step import random_prototypes, time_steps

    from hierclr.config.pretrain import HCSCLossConfig
    from hierclr.losses import HCSCObjective
    from hierclr.models import MoCo

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    if args.smoke:
        configs = [("resnet10", 32, 4)]
        queue, sizes, num_images, warmup, steps = 64, [30, 20, 10], 1000, 1, 2
    else:
        configs = [("resnet50", 224, 32), ("resnet50", 224, 64), ("resnet18", 32, 256)]
        queue, sizes, num_images, warmup, steps = 16384, [3000, 2000, 1000], 1_281_167, 5, 15
    rec["setup"] = {"device": str(device), "queue": queue, "prototypes": sizes, "dim": 128, "num_images": num_images,
                    "warmup_steps": warmup, "timed_steps": steps, "amp": "bf16 autocast + channels_last (on/off)"}
    results = []
    protos = random_prototypes(num_images, sizes, 128, device)
    objectives = {"moco_v2": (HCSCObjective(HCSCLossConfig(warmup_epochs=0)), None, False),
                  "hcsc": (HCSCObjective(HCSCLossConfig()), protos, True),  # with the epoch's SelectionCache
                  "hcsc_full_softmax": (HCSCObjective(HCSCLossConfig()), protos, False)}  # before the cache
    model, model_key = None, None
    for backbone, size, batch in configs:
        try:
            if model_key != (backbone, size):  # one model per backbone and size, shared by its batch sizes
                model = None
                if cuda:
                    torch.cuda.empty_cache()
                torch.manual_seed(0)
                model = MoCo(backbone, dim=128, queue_size=queue, cifar_stem=size <= 64).to(device)
                model.queue_ids.copy_(torch.randint(0, num_images, (queue,)))
                model_key = (backbone, size)
        except Exception as e:  # noqa: BLE001
            results.append({"backbone": backbone, "size": size, "batch": batch, "error": _error(e)})
            rec["results"] = results
            continue
        for amp in (False, True):
            row = {"backbone": backbone, "size": size, "batch": batch, "amp_channels_last": amp}
            try:
                fmt = torch.channels_last if amp else torch.contiguous_format
                model.to(memory_format=fmt)
                g = torch.Generator(device=device).manual_seed(1)
                im_q = torch.randn(batch, 3, size, size, device=device, generator=g).contiguous(memory_format=fmt)
                im_k = torch.randn(batch, 3, size, size, device=device, generator=g).contiguous(memory_format=fmt)
                ids = torch.randint(0, num_images, (batch,), device=device, generator=g)
                for name, (obj, pr, cached) in objectives.items():
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    times = time_steps(model, obj, pr, (im_q, im_k, ids), device, steps, warmup,
                                       torch.bfloat16 if amp else None, cached=cached)
                    med = statistics.median(times)
                    row[name] = {"ms_per_step": round(1000 * med, 2), "images_per_s": round(batch / med, 1),
                                 "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}
                row["hcsc_over_moco"] = round(row["hcsc"]["ms_per_step"] / row["moco_v2"]["ms_per_step"], 3)
                row["hcsc_full_softmax_over_moco"] = round(
                    row["hcsc_full_softmax"]["ms_per_step"] / row["moco_v2"]["ms_per_step"], 3)
            except Exception as e:  # noqa: BLE001 -- e.g. out of memory: record, go on with the next config
                row["error"] = _error(e)
                if cuda:
                    torch.cuda.empty_cache()
            results.append(row)
            rec["results"] = results
    base = {(r["backbone"], r["size"], r["batch"]): r for r in results if not r.get("amp_channels_last") and "hcsc" in r}
    for r in results:  # AMP speed-up against the fp32 row of the same config, same run
        b = base.get((r["backbone"], r["size"], r["batch"]))
        if r.get("amp_channels_last") and b and "hcsc" in r:
            r["amp_speedup_hcsc"] = round(b["hcsc"]["ms_per_step"] / r["hcsc"]["ms_per_step"], 3)
    rec["results"] = results


def _normalized_objective(x, protos) -> float:
    """Sum of squared distances of every row to its (L2-normalised) level-0 prototype: computable alike for
    every backend from the returned :class:`Prototypes` (the raw K-means objective is not kept there)."""
    import torch

    c = protos.centroids[0].to(x.device)
    a = protos.assignments[:, 0].to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], 1 << 18):
        diff = x[s : s + (1 << 18)] - c[a[s : s + (1 << 18)]]
        total += (diff * diff).sum(dtype=torch.float64)
    return float(total)


def part_kmeans(rec: Recorder, args) -> None:
    import torch

    from hierclr.clustering import KMeansSettings, build_hierarchy, faiss_has_gpu, level0_kmeans

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    if args.smoke:
        n, d, sizes, niter, nredo = 5000, 16, (30, 20, 10), 2, 1
    else:
        n, d, sizes, niter, nredo = 1_281_167, 128, (3000, 2000, 1000), 20, 5
    rec["setup"] = {"n": n, "dim": d, "sizes": list(sizes), "niter": niter, "nredo": nredo, "device": str(device),
                    "data": "random unit vectors (torch, seed 0)", "seed": 0,
                    "objective_normalized": "sum over rows of ||x - normalised level-0 prototype||^2"}
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=g), dim=1)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def local(backend: str, data) -> dict:
        sync()
        t0 = time.perf_counter()
        settings = KMeansSettings(niter=niter, nredo=nredo, seed=0, device=str(device), backend=backend)
        l0 = level0_kmeans(data, sizes[0], settings)
        sync()
        t1 = time.perf_counter()
        protos = build_hierarchy(l0, sizes, settings)
        sync()
        t2 = time.perf_counter()
        return {"seconds": round(t2 - t0, 3), "level0_seconds": round(t1 - t0, 3),
                "upper_levels_seconds": round(t2 - t1, 3), "objective_level0": l0.objective,
                "objective_normalized": _normalized_objective(x, protos), "backend": l0.backend,
                "sizes": list(protos.sizes)}, protos

    ref = None
    try:  # warm-up: CUDA context, cuBLAS handles and the fp16 score-mode check, outside the timing
        level0_kmeans(x[: 20 * sizes[-1]], sizes[-1], KMeansSettings(niter=2, nredo=1, device=str(device), backend="torch"))
        km = sys.modules["hierclr.clustering.kmeans"]
        rec["torch_score_mode"] = dict(km._score_mode) or "fp32 (CPU)"
        rec["lloyd_iteration"] = _lloyd_iteration(km, x, sizes[0], sync)
        row, ref = local("torch", x)
        rec["torch"] = row
    except Exception as e:  # noqa: BLE001
        rec["torch"] = {"error": _error(e)}
    if faiss_has_gpu() or args.smoke:  # the smoke run takes faiss CPU, so the code path runs everywhere
        try:
            row, _ = local("faiss", x.cpu().numpy())
            if "seconds" in rec.get("torch", {}):
                row["torch_speedup"] = round(row["seconds"] / rec["torch"]["seconds"], 2)
                row["objective_rel_diff_vs_torch"] = row["objective_normalized"] / rec["torch"]["objective_normalized"] - 1
            rec["faiss_gpu" if cuda else "faiss_cpu"] = row
        except Exception as e:  # noqa: BLE001
            rec["faiss_gpu" if cuda else "faiss_cpu"] = {"error": _error(e)}
    else:
        rec["faiss_gpu"] = {"skipped": "faiss has no GPU here (faiss-cpu build or no GPU visible to faiss)"}
    try:
        import ray  # noqa: F401
    except ImportError:
        rec["distributed"] = {"skipped": "Ray is absent"}
        return
    try:
        rec["distributed"] = _distributed_kmeans(x, sizes, niter, nredo, cuda, ref, args)
        if "seconds" in rec.get("torch", {}) and "seconds" in rec["distributed"]:
            rec["distributed"]["torch_speedup"] = round(rec["distributed"]["seconds"] / rec["torch"]["seconds"], 2)
    except Exception as e:  # noqa: BLE001
        rec["distributed"] = {"error": _error(e)}


def _lloyd_iteration(km, x, k: int, sync) -> dict:
    """One level-0 Lloyd step (assign + sums) with the device's low-precision scores against the fp32 path
    (the CPU's numerics, run on the same device): ms each, ratio, and how often the argmin agrees."""
    import torch

    c = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:k].to(x.device)].clone()
    low = x.device.type == "cuda"
    out = {}
    for name, lp in (("fp32", False), ("fast", low)):
        times = []
        for _ in range(3):
            sums = torch.zeros(c.shape, dtype=torch.float64, device=x.device)
            sync()
            t0 = time.perf_counter()
            d2, idx = km._assign_rows(x, c, low_precision=lp, sums=sums)
            sync()
            times.append(time.perf_counter() - t0)
        out[name] = {"ms": round(1000 * min(times), 2), "objective": float(d2.double().sum()), "idx": idx}
    return {"fp32_ms": out["fp32"]["ms"], "fast_ms": out["fast"]["ms"], "low_precision": low,
            "speedup": round(out["fp32"]["ms"] / max(out["fast"]["ms"], 1e-6), 2),
            "argmin_agreement": float((out["fp32"]["idx"] == out["fast"]["idx"]).double().mean()),
            "objective_rel_diff": out["fast"]["objective"] / out["fp32"]["objective"] - 1}


def _distributed_kmeans(x, sizes, niter, nredo, cuda: bool, ref, args) -> dict:
    """One E-step through the real clustering service: two ranks submit interleaved halves, two K-means actors
    (sharing the GPU at 0.5 each, or 1 CPU each in the smoke run) run distributed Lloyd for level 0."""
    import numpy as np
    import ray

    from hierclr.config.clustering import ClusteringConfig, ClusteringServiceSection
    from hierclr.service import ClusteringService

    n = x.shape[0]
    if os.environ.get("RAY_ADDRESS"):  # join (the smoke test's session Ray; a cluster under `ray job submit`)
        ray.init(log_to_driver=False, configure_logging=False)
    else:
        ray.init(address="local", num_cpus=4 if args.smoke else 8, num_gpus=1 if cuda else 0,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cfg = ClusteringConfig(sizes=sizes, niter=niter, nredo=nredo, seed=0, backend="torch")
        svc_cfg = ClusteringServiceSection(num_actors=2, gpus_per_actor=0.5 if cuda else 0.0, cpus_per_actor=1.0)
        t0 = time.perf_counter()
        svc = ClusteringService.start("gpu-acceptance-kmeans", cfg, svc_cfg, num_rows=n)
        started = time.perf_counter() - t0
        try:
            xs = x.cpu().numpy()
            ids = np.arange(n, dtype=np.int64)
            refs = [ray.put((ids[r::2], np.ascontiguousarray(xs[r::2]))) for r in range(2)]
            t0 = time.perf_counter()
            answers = ray.get([svc.coordinator.submit.remote(0, r, 2, [refs[r]]) for r in range(2)])
            protos = ray.get(answers[0][0][0])
            seconds = time.perf_counter() - t0
            stats = answers[0][1]
        finally:
            svc.shutdown()
        out = {"seconds": round(seconds, 3), "cluster_s": round(stats.cluster_s, 3), "gather_s": round(stats.gather_s, 3),
               "service_start_s": round(started, 2), "num_actors": stats.num_actors,
               "gpus_per_actor": svc_cfg.gpus_per_actor, "sizes": list(protos.sizes),
               "objective_normalized": _normalized_objective(x, protos)}
        if ref is not None:
            out["level0_agreement_with_torch"] = float(
                (protos.assignments[:, 0] == ref.assignments[:, 0].cpu()).double().mean())
            out["objective_rel_diff_vs_torch"] = out["objective_normalized"] / _normalized_objective(x, ref) - 1
        return out
    finally:
        ray.shutdown()


def _jpeg_bytes(args, out_dir: Path, count: int, size: tuple[int, int]) -> list[bytes]:
    """``count`` JPEG files' bytes: from ``--jpeg-dir`` (recursively), else generated (smooth noise) with PIL."""
    if args.jpeg_dir:
        files = sorted(Path(args.jpeg_dir).rglob("*.jpg"))[:count] + sorted(Path(args.jpeg_dir).rglob("*.JPEG"))[:count]
        if files:
            return [f.read_bytes() for f in files[:count]]
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize(size, Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def part_augment(rec: Recorder, args) -> None:
    import numpy as np
    import torch

    from hierclr.data.streams import _train_task, finish_views
    from hierclr.data.transforms import TransformConfig

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    count, size, preset = (16, (64, 48), "cifar") if args.smoke else (256, (500, 375), "imagenet")
    images = _jpeg_bytes(args, Path(args.out), count, size)
    transforms = TransformConfig.preset(preset)
    rec["setup"] = {"images": len(images), "source": args.jpeg_dir or f"generated {size[0]}x{size[1]} JPEGs",
                    "transforms": preset, "device": str(device),
                    "cpu_stage": "one thread, as in a Ray Data task: decode + crop (+ colour ops for augment_on=cpu)"}
    batch = {"id": np.arange(len(images)), "label": np.zeros(len(images), np.int64),
             "labels": np.zeros((len(images), 1), np.int64), "shard": np.array(["synthetic"] * len(images)),
             "image": images}
    threads = torch.get_num_threads()
    res, views = {}, {}
    warm = {k: v[:2] for k, v in batch.items()}
    for mode in ("cpu", "device"):
        try:
            _train_task(warm, transforms=transforms, augment_on=mode, seed=0, ledger=None)  # lazy inits, untimed
            t0 = time.perf_counter()
            shipped = _train_task(batch, transforms=transforms, augment_on=mode, seed=0, ledger=None)
            cpu_s = time.perf_counter() - t0
            torch.set_num_threads(threads)  # the task pins one thread, as Ray Data tasks do
            reps = []
            for _ in range(4):  # first call warms the kernels up; the median of the rest is kept
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                v = finish_views(shipped, transforms, augment_on=mode, device=device, seed=0, epoch=0)
                if cuda:
                    torch.cuda.synchronize()
                reps.append(time.perf_counter() - t0)
            dev_s = statistics.median(reps[1:])
            views[mode] = (shipped["id"], v)
            res[mode] = {"cpu_stage_images_per_s_per_core": round(len(images) / cpu_s, 1),
                         "device_stage_images_per_s": round(len(images) / dev_s, 1)}
        except Exception as e:  # noqa: BLE001
            torch.set_num_threads(threads)
            res[mode] = {"error": _error(e)}
        rec[f"augment_on_{mode}"] = res[mode]
    if all("error" not in r for r in res.values()):
        rec["cpu_stage_speedup_device_vs_cpu"] = round(
            res["device"]["cpu_stage_images_per_s_per_core"] / res["cpu"]["cpu_stage_images_per_s_per_core"], 2)
        (ids_c, vc), (ids_d, vd) = views["cpu"], views["device"]
        if np.array_equal(ids_c, ids_d):  # same rows, same per-row parameters: only uint8 rounding differs
            rec["views_mean_abs_diff"] = float(torch.stack([(a.cpu() - b.cpu()).abs().mean() for a, b in zip(vc, vd)]).mean())


def _make_image_folder(root: Path, args, classes: int, train: int, val: int) -> None:
    """``root/{train,val}/class<c>/NNNN.jpg``: 32 px images, from ``--jpeg-dir`` or class-tinted noise (learnable)."""
    import io

    import numpy as np
    from PIL import Image

    src = sorted(Path(args.jpeg_dir).rglob("*.jpg")) if args.jpeg_dir else []
    rng = np.random.default_rng(0)
    tints = rng.integers(40, 216, (classes, 3))
    k = 0
    for split, per in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                if src:
                    data = src[k % len(src)].read_bytes()
                    k += 1
                else:
                    px = np.clip(tints[c] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(px).save(buf, format="JPEG", quality=90)
                    data = buf.getvalue()
                (d / f"{i:04d}.jpg").write_bytes(data)


def e2e_overrides(smoke: bool, shards: Path, uri: str, out: Path) -> tuple[list[str], list[str]]:
    """The end-to-end part's ``--set`` overrides: ``(pretrain on the demo preset, evaluate on the digits preset)``.
    A function of its own so that the CPU test suite validates both configs (smoke and GPU) without running them."""
    common = [f"data.train={shards / 'train'}", f"data.val={shards / 'val'}", "data.decode_batch_size=64",
              f"tracking.uri={uri}", "tracking.log_models=false", "tracking.chain_grids=0", "eval.ks=[5,10]",
              "optim.epochs=2", "loss.warmup_epochs=1", "resources.num_workers=1", "name=gpu-acceptance",
              f"checkpoint.storage_path={out / 'runs'}"]
    if smoke:
        backbone = "resnet10"
        common += ["model.backbone=resnet10", "model.hidden_dim=128", "model.queue_size=64", "optim.batch_size=32",
                   "clustering.sizes=[16,8,4]", "clustering.nredo=1", "service.cpus_per_actor=0",
                   "resources.use_gpu=false", "resources.local_num_cpus=4", "data.num_cpus=1",
                   "tracking.hierarchy_every=0", "eval.every=0"]  # kNN at the end only, no per-epoch tree plots
        eval_res = ["resources.use_gpu=false", "resources.local_num_cpus=4"]
    else:
        backbone = "resnet18"
        common += ["resources.use_gpu=true", "resources.gpus_per_worker=0.75", "service.gpus_per_actor=0.25",
                   "resources.cpus_per_worker=2", "resources.local_num_cpus=8", "data.num_cpus=2",
                   "optim.amp=true", "optim.channels_last=true", "data.augment_on=device", "model.queue_size=256",
                   "optim.batch_size=64"]
        eval_res = ["resources.use_gpu=true", "resources.gpus_per_worker=1", "resources.local_num_cpus=8",
                    "resources.cpus_per_worker=2"]
    eval_sets = [f"model.backbone={backbone}", f"data.train={shards / 'train'}", f"data.val={shards / 'val'}",
                 "data.decode_batch_size=64", f"tracking.uri={uri}", f"output_dir={out / 'eval'}", "knn.ks=[5,10]",
                 "resources.num_workers=1", "plot=none", *eval_res]
    return common, eval_sets


def part_end_to_end(rec: Recorder, args) -> None:
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    out = Path(args.work_dir).resolve() / "e2e"  # checkpoints, shards, MLflow: outside OUT, which stays small
    deadline = time.monotonic() + args.part_timeout - 10
    raw, shards = out / "raw", out / "shards"
    classes, train, val = (4, 32, 8) if args.smoke else (4, 64, 16)
    _make_image_folder(raw, args, classes, train, val)
    log = Path(args.out) / "logs" / "end_to_end.commands.log"
    cli = [sys.executable, "-m", "hierclr.cli"]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    rec["setup"] = {"images": {"train": classes * train, "val": classes * val}, "gpu": cuda, "tracking_uri": uri}

    def step(name: str, cmd: list[str]) -> dict:
        limit = max(5.0, (deadline - time.monotonic()) * E2E_SHARES[name])
        rc, stdout, secs = _run(cmd, limit, log)
        res = {"returncode": rc, "seconds": round(secs, 1), "limit_s": round(limit, 1), "timed_out": rc is None,
               "summary": _last_json(stdout)}
        rec[name] = res
        if rc != 0:
            raise RuntimeError(f"{name} {'timed out' if rc is None else f'exited {rc}'} (see {log})")
        return res

    step("prepare_data", [*cli, "prepare-data", str(raw), str(shards), "--shard-size", "64", "--num-cpus", "2"])
    common, eval_sets = e2e_overrides(args.smoke, shards, uri, out)
    pre = step("pretrain", [*cli, "pretrain", "--config", "demo", *[a for s in common for a in ("--set", s)]])
    summary = pre["summary"]
    run_dir, run_id = summary.get("run_dir"), summary.get("mlflow_run_id")
    if not run_dir:
        raise RuntimeError("pretrain printed no run_dir")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    losses = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
              for k in ("loss/total", "loss/prototype", "loss/instance")}
    rec["mlflow"] = {"status": run.info.status, "metrics": len(run.data.metrics), "losses": losses,
                     "knn_top1_best": run.data.metrics.get("knn/top1_best"),
                     "cluster_level0_prototypes": run.data.metrics.get("prototypes/level0/num_prototypes")}
    rec["losses_finite"] = bool(losses["loss/total"]) and all(math.isfinite(v) for vs in losses.values() for v in vs)
    rec["pretrain_completed"] = run.info.status == "FINISHED" and len(losses["loss/total"]) == 2 and bool(
        losses["loss/prototype"])
    ev = [*cli, "evaluate", "--config", "digits", "--source", run_dir, "--protocols", "knn",
          *[a for s in eval_sets for a in ("--set", s)]]
    evr = step("evaluate", ev)
    results = evr["summary"].get("results")
    knn = {}
    if results and Path(results).is_file():
        flat = json.loads(Path(results).read_text())
        knn = {k: v for k, v in _flatten(flat).items() if "knn" in k and "top1" in k}
    rec["evaluate_knn"] = knn
    rec["completed"] = bool(rec["pretrain_completed"] and rec["losses_finite"] and knn)


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else []):
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


PART_FUNCS = {"environment": part_environment, "train_step": part_train_step, "kmeans": part_kmeans,
              "augment": part_augment, "end_to_end": part_end_to_end}


# ---------------------------------------------------------------------------------------------- the driver
def run_child(args) -> int:
    """One part in this process: its results go to ``OUT/parts/<part>.json`` as they come."""
    rec = Recorder(Path(args.out) / "parts" / f"{args.child}.json")
    if args.smoke:
        import torch

        # One intra-op thread on the small CPU machine, as in the tests (conftest.py): two threads beside other
        # processes made BatchNorm many times slower.
        torch.set_num_threads(1)
    try:
        PART_FUNCS[args.child](rec, args)
    except Exception as e:  # noqa: BLE001 -- the parent reads the error from the file
        import traceback

        traceback.print_exc()
        rec["error"] = _error(e)
        return 1
    return 0


def summary_table(report: dict) -> str:
    """A short text table: one line per part, then the key numbers."""
    lines = [f"GPU acceptance ({'smoke, CPU' if report['smoke'] else 'full'}) - {report['started']}",
             f"{'part':<12} {'status':<8} {'seconds':>8}  notes"]
    for name, p in report["parts"].items():
        note = p.get("error") or p.get("skipped") or ""
        lines.append(f"{name:<12} {p.get('status', '?'):<8} {p.get('seconds', 0):>8.1f}  {note}"[:160])
    env = report["parts"].get("environment", {})
    if env.get("gpu"):
        lines.append(f"  GPU {env['gpu']['name']} {env['gpu']['memory_gib']} GiB, torch {env.get('torch')}, "
                     f"faiss {env.get('faiss')}, ray {env.get('ray')}")
    for r in report["parts"].get("train_step", {}).get("results", []):
        tag = f"{r['backbone']} {r['size']}px b{r['batch']} {'amp+cl' if r.get('amp_channels_last') else 'fp32  '}"
        if "hcsc" in r:
            lines.append(f"  train {tag}: MoCo {r['moco_v2']['ms_per_step']} ms ({r['moco_v2']['images_per_s']} img/s), "
                         f"HCSC {r['hcsc']['ms_per_step']} ms, ratio {r['hcsc_over_moco']}, "
                         f"peak {r['hcsc']['peak_memory_mib']} MiB")
        else:
            lines.append(f"  train {tag}: {r.get('error')}")
    km = report["parts"].get("kmeans", {})
    if "lloyd_iteration" in km:
        li = km["lloyd_iteration"]
        lines.append(f"  kmeans level-0 Lloyd step: fp32 {li['fp32_ms']} ms, fast {li['fast_ms']} ms "
                     f"(x{li['speedup']}), argmin agreement {li['argmin_agreement']:.5f}")
    for b in ("torch", "faiss_gpu", "faiss_cpu", "distributed"):
        if b in km:
            r = km[b]
            lines.append(f"  kmeans {b}: " + (f"{r['seconds']} s, objective {r['objective_normalized']:.6g}"
                                              if "seconds" in r else str(r.get("error") or r.get("skipped"))))
    aug = report["parts"].get("augment", {})
    for m in ("cpu", "device"):
        if f"augment_on_{m}" in aug:
            lines.append(f"  augment_on={m}: {aug[f'augment_on_{m}']}")
    e2e = report["parts"].get("end_to_end", {})
    if e2e:
        lines.append(f"  end_to_end: completed={e2e.get('completed')} losses_finite={e2e.get('losses_finite')} "
                     f"knn={e2e.get('evaluate_knn')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (checks the script, ~3 min on 2 cores)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    ap.add_argument("--jpeg-dir", default=None, help="real JPEGs (searched recursively) for augment and end_to_end")
    ap.add_argument("--budget-s", type=float, default=None, help="overall limit (default: 480 full, 420 smoke)")
    ap.add_argument("--work-dir", default=None,
                    help="scratch space for the end-to-end run's data, checkpoints and MLflow store (default: a temp dir)")
    ap.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--part-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    budget = args.budget_s or (420.0 if args.smoke else 480.0)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_acceptance_"))
    deadline = time.monotonic() + budget
    report = {"smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": budget,
              "command": " ".join(sys.argv), "work_dir": str(work), "parts": {}}
    path = out / "gpu_acceptance.json"
    _write_json(path, report)
    for part in parts:
        left = deadline - time.monotonic()
        timeout = min(TIMEOUTS[part][1 if args.smoke else 0], left)
        if timeout < 10:
            report["parts"][part] = {"status": "skipped", "skipped": f"no time left in the {budget:.0f} s budget"}
            _write_json(path, report)
            continue
        part_file = out / "parts" / f"{part}.json"
        part_file.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--out", str(out),
               "--work-dir", str(work), "--part-timeout", str(timeout)]
        if args.smoke:
            cmd.append("--smoke")
        if args.jpeg_dir:
            cmd += ["--jpeg-dir", args.jpeg_dir]
        rc, _, secs = _run(cmd, timeout, out / "logs" / f"{part}.log")
        try:
            result = json.loads(part_file.read_text()) if part_file.is_file() else {}
        except json.JSONDecodeError:
            result = {}
        status = "timeout" if rc is None else ("ok" if rc == 0 and "error" not in result else "error")
        if rc not in (None, 0) and "error" not in result:
            result["error"] = f"exit code {rc} (see logs/{part}.log)"
        if rc is None:
            result["error"] = f"timed out after {timeout:.0f} s (partial results kept; see logs/{part}.log)"
        report["parts"][part] = {"status": status, "seconds": round(secs, 1), **result}
        _write_json(path, report)
    report["total_s"] = round(budget - (deadline - time.monotonic()), 1)
    _write_json(path, report)
    table = summary_table(report)
    (out / "gpu_acceptance.txt").write_text(table + "\n")
    print(table)
    return 0 if all(p.get("status") == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
