"""Where an HCSC epoch's time goes: E-step (embed, cluster, broadcast) vs M-step (train), as fractions of the
epoch, from a real short ``hierclr pretrain`` run (Ray Train workers, Ray Data, the clustering actor).

On a CPU machine, with CIFAR-10 from ``../shared/data`` (a subset keeps it short)::

    python benchmarks/estep_breakdown.py --cifar10-jpg /tmp/cifar10-jpg --images 5000 \\
        --set resources.use_gpu=false --set resources.num_workers=2 --set resources.local_num_cpus=4 \\
        --set data.num_cpus=1 --set optim.epochs=2 --set loss.warmup_epochs=0 --set eval.every=0

On a GPU machine: ``--config cifar100-r18 --set data.train=/data/cifar100/train`` (the preset as is).
Prints one row per epoch (seconds and fractions) and the mean over the E-step epochs.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

KEYS = ("time/embed", "time/cluster", "time/broadcast", "time/train", "time/eval")


def prepare_subset(root: Path, images: int, out: Path, seed: int = 0) -> str:
    """``root/train`` (ImageFolder) -> parquet shards of a seeded random ``images``-subset; returns the train URI."""
    from hierclr.data.prepare import PrepareConfig, prepare_data

    files = sorted(p.relative_to(root / "train").as_posix() for p in (root / "train").rglob("*.jpg"))
    random.Random(seed).shuffle(files)
    subset = out / "subset.txt"
    subset.write_text("\n".join(sorted(files[:images])) + "\n")
    prepare_data(PrepareConfig(source=str(root), out=str(out / "data"), splits=("train",),
                               subset_file=str(subset), num_cpus=2))
    return str(out / "data" / "train")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar100-r18")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cifar10-jpg", type=Path, help="a CIFAR-10 ImageFolder root (train/<class>/*.jpg) to subset")
    p.add_argument("--images", type=int, default=5000)
    args = p.parse_args()

    from hierclr.config.pretrain import load_config
    from hierclr.runtime.driver import run_training
    from hierclr.runtime.ray_start import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="hierclr-estep-"))
    sets = [f"checkpoint.storage_path={work}/runs", f"tracking.uri=sqlite:///{work}/mlflow.db", "data.val=null"]
    ensure_ray(load_config(args.config, sets + args.set).resources.local_num_cpus)  # before prepare starts one
    if args.cifar10_jpg:
        sets.append(f"data.train={prepare_subset(args.cifar10_jpg, args.images, work)}")
    cfg = load_config(args.config, sets + args.set)
    result = run_training(cfg, echo=print)
    rows = []
    for r in result.history:
        total = r["time/epoch"]
        row = {"epoch": int(r["epoch"]), "epoch_s": round(total, 2)}
        for k in KEYS:
            if k in r:
                row[k.split("/")[1] + "_s"] = round(r[k], 2)
                row[k.split("/")[1] + "_frac"] = round(r[k] / total, 3)
        rows.append(row)
        print(json.dumps(row))
    estep = [r for r in result.history if r.get("time/cluster", 0) > 0]
    if estep:
        mean = {k.split("/")[1] + "_frac": round(sum(r[k] / r["time/epoch"] for r in estep) / len(estep), 3)
                for k in KEYS if k in estep[0]}
        print(json.dumps({"config": args.config, "images": result.history and int(
            result.history[0]["train/steps"] * cfg.optim.batch_size), "workers": cfg.resources.num_workers,
            "mean_over_estep_epochs": mean}))


if __name__ == "__main__":
    main()
