"""Does HCSC beat MoCo v2 here? MoCo v2, PCL v2, HCSC and HCSC (``clustering.features: train_keys``) at equal
budget on real CIFAR-10, through ``hierclr prepare-data`` shards and the ``hierclr pretrain`` code path.

Every method gets the same backbone, data, epochs, batch, augmentation (MoCo v2's, ``transforms: cifar``),
optimiser, queue and seed set; only ``method`` (and for the last variant ``clustering.features``) differs. PCL v2
clusters at the same granularities HCSC's hierarchy uses (flat, one K-means per size). Runs are interleaved: seed
s runs every method once, in an order rotated by s, so load drift on a shared machine hits every method alike.

Per run, read from the run's own per-epoch history (the numbers MLflow holds):

* kNN top-1 at k = 20 and 200 (HCSC Eq. 11: cosine, weighted vote exp(sim / 0.07)), the training split as the
  bank and the **official CIFAR-10 test split** (10,000 images) as queries, at the last epoch;
* the full AMI (every row, no subsampling) of the model's own prototypes at every prototype level against every
  label level of the 3-level hierarchy class (10) -> group (4) -> domain (2) (HCSC Table 11 form), last epoch;
* ICSC selection precision / recall per level (HCSC Fig. 5: dropped negatives that share the query's class) and
  the no-selection false-negative rate, last epoch (HCSC variants only);
* wall time per epoch (median over the E-step epochs, the kNN evaluation excluded) and per run.

Next to them, the raw-pixel kNN floor of the **same** bank and queries (:mod:`hierclr.eval.pixel_floor`; the
published 45.8% of ``../shared/data/README.md`` uses the full 50,000-image bank).

Profiles (``--profile``; ``--set KEY=VALUE`` overrides any config field for every method):

* ``cpu``: sized for a 2-core machine without a GPU, all methods x 2 seeds in at most 90 minutes: a seeded
  class-balanced subset of 10,000 training images (1,000 per class), ResNet-10 (one BasicBlock per stage) with
  the ImageNet stem at 32 px (1x1 final maps; 1.8x the images/s of ResNet-18 here, and the CIFAR stem would
  cost 12x), 18 epochs (2 warm-up), batch 128, prototypes 100-40-10, 2 CPU DDP workers;
* ``gpu``: ResNet-18 with the CIFAR stem, the full training split, 200 epochs (20 warm-up), batch 256, one GPU
  worker and the clustering actor sharing it; on a Ray cluster add ``--address auto`` and scale with
  ``--set resources.num_workers=N``. ``--source`` may be the CIFAR-100 archive (``--kind cifar100``, its
  20-superclass hierarchy is built in).

    tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp
    python benchmarks/method_quality.py --profile cpu --source /tmp/cifar10-jpg \\
        --hierarchy ../shared/data/cifar10-hierarchy.tsv --out /tmp/method_quality

``OUT/method_quality.json`` is rewritten after every run, and a rerun with the same ``--out`` skips the runs it
already holds (a stopped benchmark continues); ``OUT/method_quality.md`` is the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = {  # name: the overrides that make the method (everything else is shared)
    "moco_v2": ["method=moco"],
    "pcl_v2": ["method=pcl"],
    "hcsc": ["method=hcsc", "clustering.features=embed_pass"],
    "hcsc_train_keys": ["method=hcsc", "clustering.features=train_keys"],
}

PROFILES = {
    "cpu": {
        "preset": "demo",
        "train_per_class": 1000,
        "seeds": [0, 1],
        "set": ["model.backbone=resnet10", "model.cifar_stem=false", "model.queue_size=4096",
                "clustering.sizes=[100,40,10]", "pcl.num_clusters=[100,40,10]", "optim.epochs=18",
                "loss.warmup_epochs=2", "optim.batch_size=128",
                "optim.base_lr=0.12", "resources.num_workers=2", "resources.cpus_per_worker=1",
                "resources.local_num_cpus=4", "resources.use_gpu=false", "data.num_cpus=1",
                "service.cpus_per_actor=0", "eval.every=0", "eval.ks=[20,200]", "checkpoint.every=1000"],
    },
    "gpu": {
        "preset": "cifar100-r18",
        "train_per_class": None,
        "seeds": [0, 1, 2],
        "set": ["model.backbone=resnet18", "model.cifar_stem=true", "model.queue_size=4096",
                "clustering.sizes=[1000,500,100]", "pcl.num_clusters=[1000,500,100]", "optim.epochs=200",
                "loss.warmup_epochs=20",
                "optim.batch_size=256", "resources.num_workers=1", "resources.use_gpu=true",
                "service.gpu_share=0.2", "eval.every=20", "eval.ks=[20,200]", "checkpoint.every=10"],
    },
}


def prepare(source: str, kind: str, hierarchy: str | None, per_class: int | None, out: Path) -> tuple[str, str]:
    """``hierclr prepare-data`` of the train (a seeded ``per_class`` subset when given) and test splits into
    parquet shards under ``out/data``; reused when already there. Returns the (train, test) URIs."""
    from hierclr.data.prepare import PrepareConfig, prepare_data

    data = out / "data"
    subset = None
    if per_class is not None:
        subset = out / "subset.txt"
        subset.write_text("\n".join(subset_files(Path(source), per_class)) + "\n")
    if not (data / "test" / "manifest.json").exists():
        prepare_data(PrepareConfig(source=source, out=str(data), kind=kind, splits=("train", "test"),
                                   subset_file=None if subset is None else str(subset), hierarchy=hierarchy,
                                   num_cpus=2, seed=0))
    return str(data / "train"), str(data / "test")


def subset_files(root: Path, per_class: int, seed: int = 0) -> list[str]:
    """``per_class`` files of every class of ``root/train``, drawn with a fixed seed (the same for every run)."""
    keep = []
    for cls in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
        files = sorted(f.relative_to(root / "train").as_posix() for f in cls.glob("*.jpg"))
        random.Random(f"{seed}/{cls.name}").shuffle(files)
        keep += files[:per_class]
    return sorted(keep)


def pixel_floor(root: Path, train_files: list[str] | None, ks: tuple[int, ...]) -> dict:
    """Raw-pixel kNN of the same bank (the training files) and queries (the test split), read from the JPEGs."""
    import numpy as np
    from PIL import Image

    from hierclr.eval.pixel_floor import pixel_knn_floor

    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())

    def load(split: str, files: list[str]):
        return (np.stack([np.asarray(Image.open(root / split / f).convert("RGB")) for f in files]),
                np.array([classes.index(f.split("/")[0]) for f in files]))

    if train_files is None:
        train_files = sorted(p.relative_to(root / "train").as_posix() for p in (root / "train").rglob("*.jpg"))
    test_files = sorted(p.relative_to(root / "test").as_posix() for p in (root / "test").rglob("*.jpg"))
    floor = pixel_knn_floor(*load("train", train_files), *load("test", test_files), ks=ks, num_classes=len(classes))
    return {f"top1_k{k}": round(floor[f"top1_k{k}"], 4) for k in ks}


def run_summary(history: list[dict], warmup: int, seconds: float) -> dict:
    """The numbers of one run: last-epoch kNN / AMI / selection, epoch times."""
    last = history[-1]
    estep = [r["time/epoch"] - r.get("time/eval", 0.0) for r in history if r["epoch"] >= warmup] or [0.0]
    return {
        "knn": {k.removeprefix("knn/"): round(v, 4) for k, v in last.items() if k.startswith("knn/top1_k")},
        "ami": {k.removeprefix("prototypes/ami/"): round(v, 4) for k, v in last.items()
                if k.startswith("prototypes/ami/")},
        "selection": {k.removeprefix("selection/"): round(v, 4) for k, v in last.items()
                      if k.startswith("selection/")},
        "loss_last": round(last.get("loss/total", float("nan")), 4),
        "epoch_s_median": round(statistics.median(estep), 2),
        "epoch_s": [round(r["time/epoch"] - r.get("time/eval", 0.0), 2) for r in history],
        "run_s": round(seconds, 1),
    }


def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "n": len(values)}


def aggregate(runs: list[dict]) -> dict:
    """Mean and spread over seeds of every number, per method."""
    out: dict = {}
    for name in METHODS:
        mine = [r for r in runs if r["method"] == name]
        if not mine:
            continue
        agg: dict = {"seeds": [r["seed"] for r in mine]}
        for group in ("knn", "ami", "selection"):
            keys = sorted(set().union(*(r[group] for r in mine)))
            agg[group] = {k: _spread([r[group][k] for r in mine if k in r[group]]) for k in keys}
        agg["epoch_s_median"] = _spread([r["epoch_s_median"] for r in mine])
        agg["run_s"] = _spread([r["run_s"] for r in mine])
        out[name] = agg
    if "moco_v2" in out:
        base = out["moco_v2"]["epoch_s_median"]["mean"]
        for agg in out.values():
            agg["epoch_vs_moco_v2"] = round(agg["epoch_s_median"]["mean"] / base, 3)
    return out


def markdown(result: dict) -> str:
    """The README table: mean ± std (min-max) over seeds."""
    def cell(s: dict | None, pct: bool = True) -> str:
        if s is None:
            return "n/a"
        f = 100.0 if pct else 1.0
        return f"{s['mean'] * f:.1f} ± {s['std'] * f:.1f}" if pct else f"{s['mean']:.3f} ± {s['std']:.3f}"

    floor = result.get("pixel_floor")  # computed from an ImageFolder source only
    header = ("| method | kNN top-1 k=20 (%) | k=200 (%) | AMI class | AMI group | AMI domain | ICSC precision l0 "
              "| s / epoch | vs MoCo |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    if floor:
        lines.append(f"| raw pixels (same bank) | {floor['top1_k20'] * 100:.1f} | {floor['top1_k200'] * 100:.1f} "
                     "| | | | | | |")
    for name, agg in result["summary"].items():
        ami = agg["ami"]
        lines.append(f"| {name} | {cell(agg['knn'].get('top1_k20'))} | {cell(agg['knn'].get('top1_k200'))} | "
                     f"{cell(ami.get('label0'), False)} | {cell(ami.get('label1'), False)} | "
                     f"{cell(ami.get('label2'), False)} | {cell(agg['selection'].get('precision_l0'), False)} | "
                     f"{agg['epoch_s_median']['mean']:.1f} | {agg.get('epoch_vs_moco_v2', float('nan')):.2f}x |")
    seeds = sorted({s for agg in result["summary"].values() for s in agg["seeds"]})
    lines.append(f"\nmean ± std over seeds {seeds}. AMI (HCSC Table 11's convention, `prototypes/ami/label{{m}}`): "
                 "prototype level m against label level m, both counted from the finest; every pair is in the JSON.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--source", required=True, help="CIFAR ImageFolder root (train/, test/) or CIFAR archive")
    p.add_argument("--kind", default="auto", choices=["auto", "imagefolder", "cifar10", "cifar100"])
    p.add_argument("--hierarchy", default=None, help="label hierarchy edge list (CIFAR-100: built in)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the profile's)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--address", default=None, help="Ray address (default: a local Ray)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    from hierclr.config.pretrain import load_config
    from hierclr.runtime.driver import run_training
    from hierclr.runtime.ray_start import ensure_ray

    prof = PROFILES[args.profile]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else prof["seeds"]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; allowed: {', '.join(METHODS)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = [*prof["set"], f"checkpoint.storage_path={out}/runs", f"tracking.uri=sqlite:///{out}/mlflow.db",
            "tracking.log_models=false", *args.set]
    probe = load_config(prof["preset"], [*base, "data.train=builtin://digits/train", "data.val=builtin://digits/val"])
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    ensure_ray(probe.resources.local_num_cpus)

    store = out / "method_quality.json"
    result = json.loads(store.read_text()) if store.exists() else {"runs": []}
    t0 = time.perf_counter()
    train, test = prepare(args.source, args.kind, args.hierarchy, prof["train_per_class"], out)
    prep_s = time.perf_counter() - t0
    if "pixel_floor" not in result and Path(args.source).is_dir():
        files = subset_files(Path(args.source), prof["train_per_class"]) if prof["train_per_class"] else None
        result["pixel_floor"] = pixel_floor(Path(args.source), files, tuple(probe.eval.ks))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent, check=False).stdout.strip()
    result.update({
        "command": "python benchmarks/method_quality.py " + " ".join(sys.argv[1:]),
        "profile": args.profile, "commit": commit, "machine": f"{platform.node()} ({platform.processor() or '?'}), "
        f"{os.cpu_count()} CPUs", "train": train, "test": test, "prepare_s": round(prep_s, 1),
        "shared_overrides": base, "methods": {m: METHODS[m] for m in methods},
    })
    done = {(r["method"], r["seed"]) for r in result["runs"]}
    for i, seed in enumerate(seeds):
        for name in methods[i % len(methods):] + methods[: i % len(methods)]:
            if (name, seed) in done:
                continue
            cfg = load_config(prof["preset"], [*base, f"data.train={train}", f"data.val={test}", f"seed={seed}",
                                               f"name=mq-{name}-s{seed}", *METHODS[name]])
            start = time.perf_counter()
            res = run_training(cfg, echo=lambda *a: None)
            run = {"method": name, "seed": seed, **run_summary(res.history, cfg.loss.warmup_epochs,
                                                              time.perf_counter() - start)}
            result["runs"].append(run)
            result["summary"] = aggregate(result["runs"])
            store.write_text(json.dumps(result, indent=1))
            print(json.dumps({k: run[k] for k in ("method", "seed", "knn", "epoch_s_median", "run_s")}), flush=True)
    result["summary"] = aggregate(result["runs"])
    store.write_text(json.dumps(result, indent=1))
    (out / "method_quality.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
