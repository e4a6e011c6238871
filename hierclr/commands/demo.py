"""``hierclr demo``: single-process MoCo v2 + HCSC on synthetic images (CPU, no download, no Ray)."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("demo", help="single-process MoCo v2 + HCSC on synthetic images (CPU, no download)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hierclr.runtime.local import LocalRunConfig, run_local_hcsc

    cfg = LocalRunConfig(epochs=args.epochs, train_images=args.images, seed=args.seed)
    print(f"hierclr demo: MoCo v2 + HCSC, {cfg.backbone} (CIFAR stem), {cfg.train_images} synthetic 32 px images, "
          f"prototypes {list(cfg.clustering.sizes)}, {cfg.epochs} epochs ({cfg.loss.warmup_epochs} warm-up)",
          flush=True)
    result = run_local_hcsc(cfg, on_epoch=lambda row: print(json.dumps(row), flush=True))
    print(json.dumps({"knn_top1_k20": result["knn_top1_k20"], "prototype_sizes": result["prototype_sizes"]}))
    return 0
