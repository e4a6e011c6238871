"""``hierclr kmeans``: hierarchical K-means of an (N, d) .npy feature file into a Prototypes file."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hierclr.commands.common import int_list

SETTINGS = ("niter", "nredo", "temperature", "min_cluster_size", "seed", "device", "backend")


def register(sub) -> None:
    p = sub.add_parser("kmeans", help="hierarchical K-means of an (N, d) .npy feature file into a Prototypes file",
                       epilog="unset K-means flags take the defaults of hierclr.clustering.KMeansSettings")
    p.add_argument("features", help="path to an (N, d) float .npy file; row i = dataset id i")
    p.add_argument("--sizes", type=int_list, default=(3000, 2000, 1000), help="prototypes per level, finest first")
    p.add_argument("--out", default="prototypes.pt")
    # K-means settings: unset flags keep KMeansSettings' defaults (one place for each default)
    p.add_argument("--niter", type=int, help="Lloyd iterations")
    p.add_argument("--nredo", type=int, help="restarts, the best objective kept")
    p.add_argument("--temperature", type=float, help="mean phi after rescaling, Eq. 3")
    p.add_argument("--min-cluster-size", dest="min_cluster_size", type=int, help="drop smaller level-0 clusters")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda[:i]")
    p.add_argument("--backend", choices=("auto", "faiss", "torch"))
    p.add_argument("--normalize", action="store_true", help="L2-normalise the features first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hierclr.clustering import KMeansSettings, hierarchical_kmeans

    path = Path(args.features)
    if not path.is_file():
        raise SystemExit(f"hierclr kmeans: features file not found: {path}")
    feats = np.load(path, mmap_mode="r")
    if args.normalize:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    t0 = time.perf_counter()
    given = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    protos = hierarchical_kmeans(feats, args.sizes, KMeansSettings(**given))
    seconds = time.perf_counter() - t0
    out = protos.save(args.out)
    summary = {"features": str(path), "shape": list(feats.shape), "sizes": list(protos.sizes),
               "seconds": round(seconds, 2), "out": str(out)}
    for level in range(protos.num_levels):
        counts = protos.cluster_sizes(level)
        summary[f"level{level}"] = {"min": int(counts.min()), "median": int(counts.median()), "max": int(counts.max()),
                                    "empty": int((counts == 0).sum()), "phi_mean": float(protos.phi[level].mean())}
    print(json.dumps(summary, indent=2))
    return 0
