"""``hierclr pretrain``: distributed pretraining on Ray Train (HCSC, MoCo v2, PCL v2)."""
from __future__ import annotations

import argparse

from hierclr.commands.common import add_run_flags, list_presets_if_asked, overrides, resolve_config, train_and_report

SHOWN = ("epoch", "lr", "loss/total", "knn/top1_k20", "knn/top1_best", "train/images_per_s")


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="distributed pretraining on Ray Train (HCSC, MoCo v2, PCL v2)")
    add_run_flags(p, "demo", "--set optim.epochs=10 --set clustering.sizes=[100,50]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hierclr.config.loader import PRESET_DIR

    if list_presets_if_asked(args, PRESET_DIR):
        return 0
    from hierclr.config.pretrain import load_config

    cfg = resolve_config(args, lambda: load_config(args.config, overrides(args)))
    return 0 if cfg is None else train_and_report(cfg, args, lambda k: k in SHOWN, floor=digits_floor(cfg))


def digits_floor(cfg) -> dict | None:
    """The raw-pixel kNN of the run's own split when it trains and evaluates on the built-in digits (the demo),
    so that its learned kNN can be read against what pixels alone give; None for any other data."""
    train, val = cfg.data.train, cfg.data.val
    if not (train.startswith("builtin://digits/") and val and val.startswith("builtin://digits/")):
        return None
    from hierclr.data.builtin import digits_pixels
    from hierclr.eval.pixel_floor import pixel_knn_floor

    (xtr, ytr), (xte, yte) = digits_pixels(train.rsplit("/", 1)[1]), digits_pixels(val.rsplit("/", 1)[1])
    return pixel_knn_floor(xtr, ytr, xte, yte, ks=cfg.eval.ks, num_classes=10)
