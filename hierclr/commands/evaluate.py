"""``hierclr evaluate``: the paper's evaluation protocols for one encoder, on Ray, into MLflow."""
from __future__ import annotations

import argparse
import json
import time

from hierclr.commands.common import list_presets_if_asked, resolve_config


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="the paper's evaluation protocols for an encoder (kNN, linear, "
                                        "semi-supervised, clustering, hierarchy), on Ray, into MLflow")
    p.add_argument("--config", default="digits", help="evaluate preset (see --list-presets) or YAML file")
    p.add_argument("--source", default=None, help="the encoder: hierclr checkpoint / run dir / best_encoder.pt, "
                                                  "torchvision state dict, official MoCo-style checkpoint, "
                                                  "or mlflow:<run id>[/encoder_best] (default: the last encoder)")
    p.add_argument("--protocols", default=None, help="comma-separated subset of knn,linear,semi,clustering,hierarchy")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one field, e.g. --set knn.ks=[20]")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-presets", action="store_true", help="list the built-in presets and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hierclr.config.loader import EVALUATE_PRESET_DIR

    if list_presets_if_asked(args, EVALUATE_PRESET_DIR):
        return 0
    from hierclr.config.evaluate import load_evaluate_config

    overrides = list(args.set or ())
    if args.source:
        overrides.insert(0, f"source={args.source}")
    if args.protocols:
        overrides.insert(0, f"protocols=[{args.protocols}]")
    cfg = resolve_config(args, lambda: load_evaluate_config(args.config, overrides))
    if cfg is None:
        return 0
    from hierclr.runtime.evaluate import run_evaluate

    t0 = time.perf_counter()
    result = run_evaluate(cfg)
    print(json.dumps({"results": result.results_path, "output_dir": result.output_dir,
                      "mlflow_run_id": result.mlflow_run_id, "parent_run_id": result.parent_run_id,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0
