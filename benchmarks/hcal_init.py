"""Does HCAL gain from HCSC's representation? (issue 6, "beyond the papers").

Runs, on one dataset and budget:
  1. an HCSC pretraining run (``hierclr pretrain``; skipped with ``--hcsc RUN_DIR``);
  2. HCAL from scratch (random trunk, random prototypes);
  3. HCAL with the HCSC trunk and projection head, random prototypes;
  4. HCAL with the HCSC trunk and head, prototypes = class means of the training embeddings under the HCSC
     network, parents = means of their children (``hcal.init_prototypes=class_means``).
and prints per-epoch level accuracies and HVR of 2-4, plus the first epoch at which each reaches a target
level-0 accuracy. The HCAL feature space is the HCSC embedding space (``hcal.feat_dim = model.dim``, the
projection is HCSC's MLP head), so class means there are means of points HCSC's prototypes cluster.

    python benchmarks/hcal_init.py --out hcal_init.json                      # built-in digits, CPU
    python benchmarks/hcal_init.py --pretrain-set data.train=... --hcal-config cifar10-hcal ...
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-config", default="demo")
    ap.add_argument("--pretrain-set", action="append", default=[], help="overrides of the HCSC run")
    ap.add_argument("--hcsc", default=None, help="an existing HCSC run directory (skips the pretraining run)")
    ap.add_argument("--hcal-config", default="digits-hcal")
    ap.add_argument("--hcal-set", action="append", default=[], help="overrides of every HCAL run")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--target", type=float, default=0.9, help="level-0 accuracy that counts as converged")
    ap.add_argument("--variants", default="scratch,hcsc_trunk,hcsc_class_means",
                    help="comma-separated subset; name=KEY=VALUE;KEY=VALUE adds a variant of hcsc_class_means")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from hierclr.config.pretrain import load_config
    from hierclr.config.supervised import load_supervised_config
    from hierclr.runtime.driver import run_training

    report: dict = {"args": vars(args)}
    hcsc_dir = args.hcsc
    pcfg = load_config(args.pretrain_config, args.pretrain_set)
    if hcsc_dir is None:
        t0 = time.perf_counter()
        res = run_training(pcfg)
        hcsc_dir = res.run_dir
        report["hcsc"] = {"run_dir": hcsc_dir, "seconds": time.perf_counter() - t0,
                          "knn": [r.get("knn/top1_best") for r in res.history]}
    m = pcfg.model
    # every variant has the HCSC network's shape (trunk, MLP projection to model.dim), only the init differs
    shape = [f"model.backbone={m.backbone}", f"model.cifar_stem={str(m.cifar_stem).lower()}",
             f"hcal.feat_dim={m.dim}", f"hcal.hidden_dim={m.hidden_dim or 'null'}"]
    from_hcsc = [*shape, f"model.init={hcsc_dir}", "model.init_head=true"]
    variants = {
        "scratch": shape,
        "hcsc_trunk": from_hcsc,
        "hcsc_class_means": [*from_hcsc, "hcal.init_prototypes=class_means"],
    }
    chosen = {}
    for item in args.variants.split(","):
        name, _, extra = item.partition("=")
        chosen[name] = variants[name] if not extra else [*variants["hcsc_class_means"], *extra.split(";")]
    variants = chosen
    for name, sets in variants.items():
        cfg = load_supervised_config(args.hcal_config, [*sets, *args.hcal_set, f"optim.epochs={args.epochs}",
                                                        f"name=hcal-init-{name}", "tracking.log_models=false",
                                                        "eval.every=1"], task="hcal")
        t0 = time.perf_counter()
        res = run_training(cfg)
        rows = [{k: round(v, 4) for k, v in r.items() if k.startswith(("acc/", "val/hvr", "init/")) or k == "epoch"}
                for r in res.history]
        reach = next((int(r["epoch"]) for r in rows if r.get("acc/level0", 0) >= args.target), None)
        report[name] = {"rows": rows, "epoch_reaching_target": reach, "seconds": time.perf_counter() - t0,
                        "mlflow_run_id": res.mlflow_run_id}
        print(json.dumps({name: report[name]}), flush=True)

    print(f"\n{'variant':18s} " + " ".join(f"ep{e}:acc0/acc1/hvr" for e in range(args.epochs)))
    for name in variants:
        cells = [f"{r.get('acc/level0', float('nan')):.3f}/{r.get('acc/level1', float('nan')):.3f}/"
                 f"{r.get('val/hvr', float('nan')):.3f}" for r in report[name]["rows"]]
        print(f"{name:18s} " + " ".join(cells) + f"   first epoch >= {args.target}: {report[name]['epoch_reaching_target']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
