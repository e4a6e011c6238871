"""The ``hierclr`` command. Subcommands parse arguments and call the library; they hold no math.

    hierclr pretrain --config PRESET|FILE [--set k=v ...]   distributed pretraining on Ray (HCSC, MoCo v2, PCL v2)
    hierclr finetune --loss ce|supcon|clce|varcon [--config ...]   supervised training / fine-tuning on Ray Train
    hierclr hcal [--config ...]        hierarchical classification (HCAL) on a dataset with a label hierarchy
    hierclr evaluate --source CKPT [--config ...]   kNN / linear / semi-supervised / clustering / hierarchy protocols
    hierclr demo                      single-process HCSC on synthetic images (no download, CPU)
    hierclr kmeans FEATURES.npy ...   hierarchical K-means of a feature file into Prototypes
    hierclr prepare-data SRC OUT ...  ImageFolder tree / CIFAR archive -> parquet shards + manifest (on Ray)
    hierclr inspect-data URI          list a dataset (parquet / webdataset / imagefolder) and decode a sample
    hierclr export SOURCE OUT         a trained trunk -> torchvision ResNet state dict (+ OUT.json: arch, how to load)
    hierclr version
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers like 3000,2000,1000, got {text!r}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hierclr.runtime.local import LocalRunConfig, run_local_hcsc

    cfg = LocalRunConfig(epochs=args.epochs, train_images=args.images, seed=args.seed)
    print(f"hierclr demo: MoCo v2 + HCSC, {cfg.backbone} (CIFAR stem), {cfg.train_images} synthetic 32 px images, "
          f"prototypes {list(cfg.clustering.sizes)}, {cfg.epochs} epochs ({cfg.loss.warmup_epochs} warm-up)", flush=True)
    result = run_local_hcsc(cfg, on_epoch=lambda row: print(json.dumps(row), flush=True))
    print(json.dumps({"knn_top1_k20": result["knn_top1_k20"], "prototype_sizes": result["prototype_sizes"]}))
    return 0


def _cmd_kmeans(args: argparse.Namespace) -> int:
    from hierclr.clustering import hierarchical_kmeans

    path = Path(args.features)
    if not path.is_file():
        raise SystemExit(f"hierclr kmeans: features file not found: {path}")
    feats = np.load(path, mmap_mode="r")
    if args.normalize:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    t0 = time.perf_counter()
    protos = hierarchical_kmeans(
        feats, args.sizes, niter=args.niter, nredo=args.nredo, temperature=args.temperature,
        min_cluster_size=args.min_cluster_size, seed=args.seed, device=args.device, backend=args.backend,
    )
    seconds = time.perf_counter() - t0
    out = protos.save(args.out)
    summary = {"features": str(path), "shape": list(feats.shape), "sizes": list(protos.sizes), "seconds": round(seconds, 2),
               "out": str(out)}
    for level in range(protos.num_levels):
        counts = protos.cluster_sizes(level)
        summary[f"level{level}"] = {"min": int(counts.min()), "median": int(counts.median()), "max": int(counts.max()),
                                    "empty": int((counts == 0).sum()), "phi_mean": float(protos.phi[level].mean())}
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from hierclr.data.prepare import PrepareConfig, prepare_data

    fields = {k: v for k, v in vars(args).items() if k in PrepareConfig.model_fields and v is not None}
    cfg = PrepareConfig(**fields)  # pydantic names the bad field
    t0 = time.perf_counter()
    manifests = prepare_data(cfg)
    summary = {name: {"rows": m.num_rows, "shards": len(m.shards), "classes": len(m.classes),
                      "hierarchy_levels": len(m.hierarchy["names"]) if m.hierarchy else 1, "skipped": len(m.skipped)}
               for name, m in manifests.items()}
    print(json.dumps({"out": cfg.out, "seconds": round(time.perf_counter() - t0, 1), "splits": summary}, indent=2))
    return 0


def _cmd_inspect_data(args: argparse.Namespace) -> int:
    from hierclr.data.decode import decode_rgb
    from hierclr.data.source import open_source
    from hierclr.runtime.ray_start import ensure_ray

    ensure_ray(args.num_cpus, log_to_driver=False)
    src = open_source(args.uri, format=args.format, hierarchy=args.hierarchy, verify=args.verify)
    rows = src.read().take(args.sample)
    shapes = [list(decode_rgb(r["image"]).shape) for r in rows]
    print(json.dumps({"uri": src.uri, "format": src.format, "rows": src.num_rows, "classes": len(src.classes),
                      "hierarchy": list(src.hierarchy.sizes) if src.hierarchy else None, "units": len(src.units),
                      "sample": [{"id": int(r["id"]), "label": int(r["label"]), "labels": [int(x) for x in r["labels"]],
                                  "shape": s} for r, s in zip(rows, shapes)]}, indent=2))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from hierclr.config.loader import list_presets
    from hierclr.config.pretrain import load_config

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    cfg = load_config(args.config, args.set or ())
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from hierclr.runtime.driver import run_pretrain

    t0 = time.perf_counter()
    result = run_pretrain(cfg, resume=args.resume, stop_after_epoch=args.stop_after_epoch)
    for row in result.history:
        keep = {k: round(v, 4) for k, v in row.items()
                if k in ("epoch", "lr", "loss/total", "knn/top1_k20", "knn/top1_best", "train/images_per_s")}
        print(json.dumps(keep))
    print(json.dumps({"run_dir": result.run_dir, "checkpoint": result.checkpoint, "best": result.best,
                      "mlflow_run_id": result.mlflow_run_id, "bad_images": len(result.bad_images),
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def _cmd_supervised(args: argparse.Namespace) -> int:
    from hierclr.config.supervised import list_supervised_presets, load_supervised_config

    if args.list_presets:
        print("\n".join(list_supervised_presets()))
        return 0
    overrides = list(args.set or ())
    if getattr(args, "loss", None):
        overrides.insert(0, f"loss.name={args.loss}")
    cfg = load_supervised_config(args.config, overrides, task=args.command)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from hierclr.runtime.driver_supervised import run_supervised

    t0 = time.perf_counter()
    result = run_supervised(cfg, resume=args.resume, stop_after_epoch=args.stop_after_epoch)
    for row in result.history:
        print(json.dumps({k: round(v, 4) for k, v in row.items()
                          if k in ("epoch", "lr", "loss/total", "train/acc", "train/images_per_s", "val/hvr")
                          or k.startswith("acc/")}))
    print(json.dumps({"run_dir": result.run_dir, "checkpoint": result.checkpoint, "best": result.best,
                      "mlflow_run_id": result.mlflow_run_id, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hierclr.config.evaluate import list_evaluate_presets, load_evaluate_config

    if args.list_presets:
        print("\n".join(list_evaluate_presets()))
        return 0
    overrides = list(args.set or ())
    if args.source:
        overrides.insert(0, f"source={args.source}")
    if args.protocols:
        overrides.insert(0, f"protocols=[{args.protocols}]")
    cfg = load_evaluate_config(args.config, overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from hierclr.runtime.evaluate import run_evaluate

    t0 = time.perf_counter()
    result = run_evaluate(cfg)
    print(json.dumps({"results": result.results_path, "output_dir": result.output_dir,
                      "mlflow_run_id": result.mlflow_run_id, "parent_run_id": result.parent_run_id,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from hierclr.config.sweep import list_sweep_presets, load_sweep

    if args.list_presets:
        print("\n".join(list_sweep_presets()))
        return 0
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
                      "best": result.best.best if result.best else None, "best_config": result.best_config,
                      "mlflow_parent_run_id": result.parent_run_id, "interrupted": result.interrupted,
                      "trials": {s: sum(r.status == s for r in result.rows) for s in
                                 ("FINISHED", "STOPPED", "FAILED", "UNFINISHED")},
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 3 if result.interrupted else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from hierclr.models.export import export_backbone

    try:
        result = export_backbone(args.source, args.out, num_classes=args.num_classes,
                                 classifier=args.classifier, tracking_uri=args.tracking_uri)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    print(json.dumps({"out": result.path, "sidecar": result.sidecar, "arch": result.arch,
                      "cifar_stem": result.cifar_stem, "feature_dim": result.feature_dim,
                      "num_classes": result.num_classes, "fc": result.fc, "kind": result.kind,
                      "origin": result.origin, "load": result.load}, indent=2))
    # the human-readable part on stderr: stdout stays one JSON document
    if result.cifar_stem or result.arch in (None, "resnet10"):
        why = "a CIFAR stem (3x3 conv1, no max-pool)" if result.cifar_stem else f"{result.arch or 'this layout'}"
        print(f"hierclr export: no torchvision constructor builds {why} as is; load it like this:", file=sys.stderr)
    else:
        print("hierclr export: load it without hierclr like this:", file=sys.stderr)
    print(result.load, file=sys.stderr)
    return 0


def _cmd_version(_: argparse.Namespace) -> int:
    import hierclr

    print(hierclr.__version__)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hierclr", description="Hierarchical contrastive representation learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="distributed pretraining on Ray Train (HCSC, MoCo v2, PCL v2)")
    pre.add_argument("--config", default="demo", help="preset name (see --list-presets) or YAML file; default: demo")
    pre.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one field, e.g. --set optim.epochs=10 --set clustering.sizes=[100,50]")
    pre.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    pre.add_argument("--list-presets", action="store_true", help="list the built-in presets and exit")
    pre.add_argument("--resume", default=None, metavar="PATH|latest",
                     help="continue from a checkpoint (or run) directory, or the newest run of this config name")
    pre.add_argument("--stop-after-epoch", dest="stop_after_epoch", type=int, default=None,
                     help="checkpoint and exit after this epoch (resume later with --resume latest)")
    pre.set_defaults(func=_cmd_pretrain)

    for task, help_text, default in (
            ("finetune", "supervised training / fine-tuning on Ray Train: CE, SupCon, CLCE or VarCon", "digits-finetune"),
            ("hcal", "hierarchical classification (HCAL) on Ray Train, on a dataset with a label hierarchy",
             "digits-hcal")):
        sp = sub.add_parser(task, help=help_text)
        sp.add_argument("--config", default=default,
                        help=f"preset name (see --list-presets) or YAML file; default: {default}")
        if task == "finetune":
            sp.add_argument("--loss", choices=("ce", "supcon", "clce", "varcon"), default=None,
                            help="the objective (overrides loss.name of the config)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one field, e.g. --set optim.epochs=10 --set model.init=runs/hcsc-.../")
        sp.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        sp.add_argument("--list-presets", action="store_true", help="list the built-in presets and exit")
        sp.add_argument("--resume", default=None, metavar="PATH|latest",
                        help="continue from a checkpoint (or run) directory, or the newest run of this config name")
        sp.add_argument("--stop-after-epoch", dest="stop_after_epoch", type=int, default=None,
                        help="checkpoint and exit after this epoch (resume later with --resume latest)")
        sp.set_defaults(func=_cmd_supervised)

    evl = sub.add_parser("evaluate", help="the paper's evaluation protocols for an encoder (kNN, linear, semi-supervised, "
                                          "clustering, hierarchy), on Ray, into MLflow")
    evl.add_argument("--config", default="digits", help="evaluate preset (see --list-presets) or YAML file")
    evl.add_argument("--source", default=None, help="the encoder: hierclr checkpoint / run dir / best_encoder.pt, "
                                                    "torchvision state dict, official MoCo-style checkpoint, "
                                                    "or mlflow:<run id>")
    evl.add_argument("--protocols", default=None, help="comma-separated subset of knn,linear,semi,clustering,hierarchy")
    evl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one field, e.g. --set knn.ks=[20]")
    evl.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    evl.add_argument("--list-presets", action="store_true", help="list the built-in presets and exit")
    evl.set_defaults(func=_cmd_evaluate)

    swp = sub.add_parser("sweep", help="Ray Tune sweep of pretraining runs (hierarchy sizes, temperatures, ...)")
    swp.add_argument("--space", default="demo-sweep", help="sweep file (YAML) or built-in sweep (--list-presets)")
    swp.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a sweep-file field, e.g. --set num_samples=4, --set name=try2, "
                          "--set set.optim.epochs=2 (a base-config override for every trial)")
    swp.add_argument("--resume", action="store_true",
                     help="continue the interrupted sweep of this name: unfinished trials resume from their "
                          "checkpoints, finished ones are kept, no MLflow run is duplicated")
    swp.add_argument("--retry-failed", dest="retry_failed", action="store_true",
                     help="with --resume: also resume trials that failed")
    swp.add_argument("--print-space", dest="print_space", action="store_true",
                     help="validate every value of the space against the config, print it and exit")
    swp.add_argument("--list-presets", action="store_true", help="list the built-in sweep files and exit")
    swp.set_defaults(func=_cmd_sweep)

    demo = sub.add_parser("demo", help="single-process MoCo v2 + HCSC on synthetic images (CPU, no download)")
    demo.add_argument("--epochs", type=int, default=4)
    demo.add_argument("--images", type=int, default=512)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    km = sub.add_parser("kmeans", help="hierarchical K-means of an (N, d) .npy feature file into a Prototypes file")
    km.add_argument("features", help="path to an (N, d) float .npy file; row i = dataset id i")
    km.add_argument("--sizes", type=_sizes, default=(3000, 2000, 1000), help="prototypes per level, finest first")
    km.add_argument("--out", default="prototypes.pt")
    km.add_argument("--niter", type=int, default=20)
    km.add_argument("--nredo", type=int, default=5)
    km.add_argument("--temperature", type=float, default=0.2)
    km.add_argument("--min-cluster-size", type=int, default=0)
    km.add_argument("--seed", type=int, default=0)
    km.add_argument("--device", default=None, help="cpu or cuda[:i]")
    km.add_argument("--backend", choices=("auto", "faiss", "torch"), default="auto")
    km.add_argument("--normalize", action="store_true", help="L2-normalise the features first")
    km.set_defaults(func=_cmd_kmeans)

    prep = sub.add_parser("prepare-data", help="convert an ImageFolder tree or CIFAR archive into parquet shards (Ray)")
    prep.add_argument("source", help="ImageFolder root (train/ val/ inside) or split dir, or a CIFAR .tar.gz / dir")
    prep.add_argument("out", help="output directory or s3:// / gs:// URI; one sub-directory per split")
    prep.add_argument("--kind", choices=("auto", "imagefolder", "cifar10", "cifar100"))
    prep.add_argument("--splits", type=lambda t: tuple(t.split(",")), help="ImageFolder splits, e.g. train,val")
    prep.add_argument("--shard-size", dest="shard_size", type=int, help="rows per shard (default 1000)")
    prep.add_argument("--reencode", choices=("none", "jpeg", "png"), help="default: keep the original bytes")
    prep.add_argument("--quality", type=int, help="JPEG quality when re-encoding (default 90)")
    prep.add_argument("--resize", type=int, help="resize for a low-resolution variant (e.g. 64)")
    prep.add_argument("--resize-mode", dest="resize_mode", choices=("shorter", "square"))
    prep.add_argument("--val-fraction", dest="val_fraction", type=float, help="carve a val split out of train")
    prep.add_argument("--subset-file", dest="subset_file", help="keep only the listed train files (1percent.txt)")
    prep.add_argument("--val-annotations", dest="val_annotations", help="file -> class list for a flat val folder")
    prep.add_argument("--hierarchy", help="label hierarchy: JSON or `child parent` edge list")
    prep.add_argument("--hierarchy-depths", dest="hierarchy_depths", type=_sizes,
                      help="cut an edge-list tree at these depths from the root, e.g. 4,2")
    prep.add_argument("--hierarchy-order", dest="hierarchy_order", choices=("child_parent", "parent_child"))
    prep.add_argument("--download", action="store_true", default=None, help="download CIFAR into SOURCE (internet)")
    prep.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                      help="do not decode every image in the scan pass")
    prep.add_argument("--max-bad-fraction", dest="max_bad_fraction", type=float)
    prep.add_argument("--seed", type=int)
    prep.add_argument("--num-cpus", dest="num_cpus", type=int, help="parallel tasks (starts a local Ray with this many)")
    prep.set_defaults(func=_cmd_prepare_data)

    ins = sub.add_parser("inspect-data", help="list a dataset and decode a few rows")
    ins.add_argument("uri")
    ins.add_argument("--format", choices=("auto", "parquet", "webdataset", "imagefolder"), default="auto")
    ins.add_argument("--hierarchy", default=None)
    ins.add_argument("--verify", action="store_true", help="check every parquet shard's sha256")
    ins.add_argument("--sample", type=int, default=3)
    ins.add_argument("--num-cpus", dest="num_cpus", type=int, default=None)
    ins.set_defaults(func=_cmd_inspect_data)

    exp = sub.add_parser("export", help="write a trained trunk as a plain torchvision ResNet state dict")
    exp.add_argument("source", help="hierclr checkpoint / run dir / best_encoder.pt / best_model.pt, torchvision or "
                                    "official MoCo-style state dict, mlflow:<run_id>[/<model>], runs:/<run_id>/<model>"
                                    " or models:/<model_id>")
    exp.add_argument("out", help="output file (e.g. resnet50.pth); OUT.json records the architecture and provenance")
    exp.add_argument("--num-classes", dest="num_classes", type=int, default=None,
                     help="rows of fc (default: the source's classifier, else 1000); fc is the source's classifier "
                          "when it has one of this size, else zeros")
    exp.add_argument("--no-classifier", dest="classifier", action="store_false",
                     help="zero fc even when the source has a classifier")
    exp.add_argument("--tracking-uri", dest="tracking_uri", default=None,
                     help="MLflow store of an mlflow:/runs:/models: source (default: $MLFLOW_TRACKING_URI, else "
                          "sqlite:///mlflow.db)")
    exp.set_defaults(func=_cmd_export)

    ver = sub.add_parser("version", help="print the hierclr version")
    ver.set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as e:  # configuration and input errors: one clear line, no traceback
        print(f"hierclr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
