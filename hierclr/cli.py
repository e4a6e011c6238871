"""The ``hierclr`` command. Subcommands parse arguments and call the library; they hold no math.

    hierclr demo                      single-process HCSC on synthetic images (no download, CPU)
    hierclr kmeans FEATURES.npy ...   hierarchical K-means of a feature file into Prototypes
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
    from hierclr.engine.local_run import LocalRunConfig, run_local_hcsc

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


def _cmd_version(_: argparse.Namespace) -> int:
    import hierclr

    print(hierclr.__version__)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hierclr", description="Hierarchical contrastive representation learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

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
