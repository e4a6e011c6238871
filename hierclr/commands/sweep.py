"""``hierclr sweep``: a Ray Tune sweep of training runs (hierarchy sizes, temperatures, losses, ...)."""
from __future__ import annotations

import argparse
import json
import time


def register(sub) -> None:
    p = sub.add_parser("sweep", help="Ray Tune sweep of pretraining runs (hierarchy sizes, temperatures, ...)")
    p.add_argument("--space", default="demo-sweep", help="sweep file (YAML) or built-in sweep (--list-presets)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a sweep-file field, e.g. --set num_samples=4, --set name=try2, "
                        "--set set.optim.epochs=2 (a base-config override for every trial)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep of this name: unfinished trials resume from their "
                        "checkpoints, finished ones are kept, no MLflow run is duplicated")
    p.add_argument("--retry-failed", dest="retry_failed", action="store_true",
                   help="with --resume: also resume trials that failed")
    p.add_argument("--print-space", dest="print_space", action="store_true",
                   help="validate every value of the space against the config, print it and exit")
    p.add_argument("--list-presets", action="store_true", help="list the built-in sweep files and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hierclr.commands.common import list_presets_if_asked
    from hierclr.config.loader import SWEEP_PRESET_DIR

    if list_presets_if_asked(args, SWEEP_PRESET_DIR):
        return 0
    from hierclr.config.sweep import load_sweep

    sweep = load_sweep(args.space, args.set or ())
    if args.print_space:
        sweep.validate_space()
        print(sweep.to_yaml(), end="")
        print(f"# {sweep.num_trials} trial(s): grid points x num_samples")
        return 0
    from hierclr.runtime.sweep import run_sweep

    t0 = time.perf_counter()
    result = run_sweep(sweep, resume=args.resume, retry_failed=args.retry_failed)
    print(json.dumps({"sweep_dir": result.sweep_dir, "best_trial": result.best.trial_id if result.best else None,
                      "best": result.best.score if result.best else None, "best_config": result.best_config,
                      "mlflow_parent_run_id": result.parent_run_id, "interrupted": result.interrupted,
                      "trials": {s: sum(r.status == s for r in result.rows) for s in
                                 ("FINISHED", "STOPPED", "FAILED", "UNFINISHED")},
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 3 if result.interrupted else 0
