"""Time hierarchical_kmeans (the E-step) per backend on one feature set.

Default: 100k x 128 unit-norm features into 3000-2000-1000 with the official settings
(niter=20, nredo=5). Timings are reported with their ratio to the faiss backend measured in the
same run (absolute seconds depend on the machine). Example:

    python benchmarks/bench_hierarchical_kmeans.py --n 100000 --dim 128 --sizes 3000,2000,1000
    python benchmarks/bench_hierarchical_kmeans.py --backends faiss,torch --device cuda   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from hierclr.clustering import KMeansSettings, hierarchical_kmeans


def clustered_features(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    """Unit-norm features around ``centres`` random directions (closer to real embeddings than noise)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sizes", default="3000,2000,1000")
    ap.add_argument("--niter", type=int, default=KMeansSettings().niter)
    ap.add_argument("--nredo", type=int, default=KMeansSettings().nredo)
    ap.add_argument("--backends", default="faiss", help="comma list of faiss,torch")
    ap.add_argument("--device", default=None, help="cpu (default) or cuda")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    x = clustered_features(args.n, args.dim, centres=sizes[0] // 3)
    results = {}
    for backend in args.backends.split(","):
        settings = KMeansSettings(niter=args.niter, nredo=args.nredo, backend=backend, device=args.device)
        times = []
        for _ in range(args.repeats):
            if args.device and args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            p = hierarchical_kmeans(x, sizes, settings)
            if args.device and args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[backend] = {"seconds_min": min(times), "seconds_all": times, "sizes": list(p.sizes)}
    base = results[next(iter(results))]["seconds_min"]
    for r in results.values():
        r["ratio_to_first"] = r["seconds_min"] / base
    print(json.dumps({
        "n": args.n, "dim": args.dim, "sizes": sizes, "niter": args.niter, "nredo": args.nredo,
        "device": args.device or "cpu", "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
