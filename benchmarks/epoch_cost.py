"""Per-epoch wall time of MoCo v2, HCSC (``clustering.features: embed_pass``) and HCSC (``train_keys``) on one
config, from real short ``hierclr pretrain`` runs (Ray Train workers, Ray Data, the clustering actor), with the
breakdown embed / cluster / broadcast / selection cache / train, and the quality guard (kNN top-1 on the val
split, prototype AMI against the label hierarchy) of the two HCSC variants.

The runs are interleaved: round r runs every variant once with seed r, in an order rotated by r, so load drift
hits every variant alike. Data: a seeded subset of the real CIFAR-10 JPEGs (``../shared/data``), a fifth of it
carved out as the kNN val split, with the 3-level CIFAR-10 hierarchy; model settings of ``cifar100-r18``
(ResNet-18, CIFAR stem, queue 4096, momentum 0.99), prototypes scaled to the subset (``--sizes``).

    tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp
    python benchmarks/epoch_cost.py --cifar10-jpg /tmp/cifar10-jpg --hierarchy ../shared/data/cifar10-hierarchy.tsv \\
        --images 1500 --epochs 4 --rounds 2

Epochs: epoch 0 is warm-up (no E-step, the same for all); epoch 1 is every HCSC run's first E-step (with
``train_keys`` it runs the embed pass once, to fill the ids no step has trained on); epochs >= 2 are the steady
state that the ratios are taken over (median over runs and epochs, eval time excluded).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

PARTS = ("embed", "cluster", "broadcast", "selection_cache", "train")
VARIANTS = {  # name: --set overrides
    "moco_v2": ["method=moco"],
    "hcsc_embed_pass": ["method=hcsc", "clustering.features=embed_pass"],
    "hcsc_train_keys": ["method=hcsc", "clustering.features=train_keys"],
}


def prepare_subset(root: Path, images: int, hierarchy: str | None, out: Path, seed: int = 0) -> tuple[str, str]:
    """``root/train`` (ImageFolder) -> parquet shards of a seeded ``images``-subset, a fifth carved out as
    ``val``; returns the (train, val) URIs."""
    from hierclr.data.prepare import PrepareConfig, prepare_data

    files = sorted(p.relative_to(root / "train").as_posix() for p in (root / "train").rglob("*.jpg"))
    random.Random(seed).shuffle(files)
    subset = out / "subset.txt"
    subset.write_text("\n".join(sorted(files[:images])) + "\n")
    prepare_data(PrepareConfig(source=str(root), out=str(out / "data"), splits=("train",), subset_file=str(subset),
                               val_fraction=0.2, hierarchy=hierarchy, num_cpus=2, seed=seed))
    return str(out / "data" / "train"), str(out / "data" / "val")


def epoch_rows(history: list[dict]) -> list[dict]:
    """Seconds per part of every epoch; ``epoch_s`` excludes the kNN evaluation."""
    rows = []
    for r in history:
        row = {"epoch": int(r["epoch"]), "epoch_s": r["time/epoch"] - r.get("time/eval", 0.0)}
        row.update({p: r.get(f"time/{p}", 0.0) for p in PARTS})
        rows.append(row)
    return rows


def summarise(results: dict[str, list[dict]], steady_from: int) -> dict:
    """Median steady-state epoch (and parts) per variant, ratios to MoCo v2, E-step share, quality guard.
    ``other_s``: the rest of the epoch (rank 0's AMI monitor, the key bank's shard, barriers)."""
    out: dict = {}
    for name, runs in results.items():
        steady = [row for run in runs for row in run["epochs"] if row["epoch"] >= steady_from]
        med = {k: statistics.median(row[k] for row in steady) for k in ("epoch_s", *PARTS)}
        estep = med["embed"] + med["cluster"] + med["broadcast"] + med["selection_cache"]
        other = statistics.median(row["epoch_s"] - sum(row[p] for p in PARTS) for row in steady)
        out[name] = {"epoch_s": round(med["epoch_s"], 3), **{f"{p}_s": round(med[p], 3) for p in PARTS},
                     "other_s": round(other, 3),
                     "estep_fraction": round(estep / med["epoch_s"], 4),
                     "first_estep_epoch_s": [round(row["epoch_s"], 2) for run in runs for row in run["epochs"]
                                             if row["epoch"] == steady_from - 1],
                     "knn_top1": [run["knn_top1"] for run in runs], "ami": [run["ami"] for run in runs]}
    base = out["moco_v2"]["epoch_s"]
    for summary in out.values():
        summary["epoch_vs_moco_v2"] = round(summary["epoch_s"] / base, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar10-jpg", type=Path, required=True, help="CIFAR-10 ImageFolder root (train/<class>/*.jpg)")
    p.add_argument("--hierarchy", default=None, help="the CIFAR-10 label hierarchy (edge list), for AMI")
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--sizes", default="100,50,10", help="prototypes per level (the preset's 1000-500-100 / 50000 "
                                                        "images, scaled to the subset)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=128, help="global batch (2 workers)")
    p.add_argument("--rounds", type=int, default=2, help="runs per variant (seed = round)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    from hierclr.config.pretrain import load_config
    from hierclr.runtime.driver import run_training
    from hierclr.runtime.ray_start import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="hierclr-epoch-cost-"))
    base = [f"checkpoint.storage_path={work}/runs", f"tracking.uri=sqlite:///{work}/mlflow.db",
            "tracking.log_models=false", "resources.use_gpu=false", "resources.num_workers=2",
            "resources.cpus_per_worker=1", "resources.local_num_cpus=4", "data.num_cpus=1", "service.cpus_per_actor=0",
            f"optim.epochs={args.epochs}", f"optim.batch_size={args.batch}", "loss.warmup_epochs=1", f"eval.every={args.epochs}",
            f"clustering.sizes=[{args.sizes}]", "checkpoint.every=1000"]
    ensure_ray(load_config("cifar100-r18", base + args.set).resources.local_num_cpus)
    train, val = prepare_subset(args.cifar10_jpg, args.images, args.hierarchy, work)
    base += [f"data.train={train}", f"data.val={val}"]
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            cfg = load_config("cifar100-r18", [*base, f"name=epoch-cost-{name}-{rnd}", f"seed={rnd}",
                                               *VARIANTS[name], *args.set])
            result = run_training(cfg, echo=lambda *a: None)
            last = result.history[-1]
            run = {"seed": rnd, "epochs": epoch_rows(result.history), "knn_top1": last.get("knn/top1_best"),
                   "ami": {k: round(v, 4) for k, v in last.items() if k.startswith("prototypes/ami/label")}}
            results[name].append(run)
            print(json.dumps({"variant": name, **run}), flush=True)
    print(json.dumps({"images": args.images, "sizes": args.sizes, "epochs": args.epochs, "batch": args.batch,
                      "workers": 2, "rounds": args.rounds, "summary": summarise(results, steady_from=2)}, indent=2))


if __name__ == "__main__":
    main()
