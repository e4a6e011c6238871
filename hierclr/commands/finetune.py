"""``hierclr finetune`` and ``hierclr hcal``: supervised training (CE, SupCon, CLCE, VarCon) and hierarchical
classification (HCAL) on Ray Train, on the same engine as pretraining."""
from __future__ import annotations

import argparse

from hierclr.commands.common import add_run_flags, list_presets_if_asked, overrides, resolve_config, train_and_report


def _shown(key: str) -> bool:
    return key in ("epoch", "lr", "loss/total", "train/acc", "train/images_per_s", "val/hvr") or key.startswith("acc/")


def register(sub) -> None:
    ft = sub.add_parser("finetune", help="supervised training / fine-tuning on Ray Train: CE, SupCon, CLCE or VarCon")
    add_run_flags(ft, "digits-finetune", "--set optim.epochs=10 --set model.init=runs/hcsc-.../")
    ft.add_argument("--loss", choices=("ce", "supcon", "clce", "varcon"), default=None,
                    help="the objective (overrides loss.name of the config)")
    ft.set_defaults(func=run)
    hc = sub.add_parser("hcal", help="hierarchical classification (HCAL) on Ray Train, on a dataset with a label "
                                     "hierarchy")
    add_run_flags(hc, "digits-hcal", "--set optim.epochs=10 --set model.init=runs/hcsc-.../")
    hc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hierclr.config.loader import SUPERVISED_PRESET_DIR

    if list_presets_if_asked(args, SUPERVISED_PRESET_DIR):
        return 0
    from hierclr.config.supervised import load_supervised_config

    sets = overrides(args)
    if getattr(args, "loss", None):
        sets.insert(0, f"loss.name={args.loss}")
    cfg = resolve_config(args, lambda: load_supervised_config(args.config, sets, task=args.command))
    return 0 if cfg is None else train_and_report(cfg, args, _shown)
