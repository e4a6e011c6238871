"""Peak memory of the E-step's hierarchical K-means (faiss CPU) versus N and M_1, for sizing the clustering actors.

Each (N, M_1) point runs in a fresh Python process (peak RSS, ``ru_maxrss``, only ever grows), which imports
hierclr, builds N x d unit-norm float32 features in small chunks (no large temporaries), and runs
``hierarchical_kmeans(features, [M_1, 2*M_1//3, M_1//3])``. Reported per point: the features' own bytes, the RSS
growth over the imported-but-idle process (features + everything K-means allocates), what K-means alone
adds on top of the features, and the wall time. Then a least-squares fit ``RSS growth = a + b * N`` per M_1
and the analytic estimate for a full dataset (default ImageNet-1k, 1.28M x 128)::

    python benchmarks/clustering_memory.py                                  # N = 20k, 50k, 100k; ~2 min on 2 idle cores
    python benchmarks/clustering_memory.py --n 20000,100000 --m1 1000 --nredo 1

nredo and niter change the time, not the memory (faiss keeps one best set of centroids).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

MiB = 1 << 20


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def level_sizes(m1: int) -> list[int]:
    """The preset's shape (3000-2000-1000): M_1, 2/3 M_1, 1/3 M_1."""
    return [m1, max(2, 2 * m1 // 3), max(1, m1 // 3)]


def one_point(n: int, m1: int, dim: int, niter: int, nredo: int, seed: int) -> dict:
    """Runs in the child process: measure one (N, M_1)."""
    import numpy as np

    from hierclr.clustering import KMeansSettings, hierarchical_kmeans

    idle = rss_bytes()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(64, m1 // 4), dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 1024):  # chunks: the float64 temporaries stay at 1 MiB
        e = min(n, s + 1024)
        rows = centres[rng.integers(0, centres.shape[0], e - s)] + 0.5 * rng.standard_normal((e - s, dim))
        x[s:e] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    with_features = rss_bytes()
    settings = KMeansSettings(niter=niter, nredo=nredo, seed=seed, backend="faiss")
    t0 = time.perf_counter()
    protos = hierarchical_kmeans(x, level_sizes(m1), settings)
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    return {
        "n": n, "m1": m1, "sizes": level_sizes(m1), "dim": dim, "niter": niter, "nredo": nredo,
        "features_mib": n * dim * 4 / MiB,
        "rss_growth_mib": (peak - idle) / MiB,
        "kmeans_extra_mib": (peak - with_features) / MiB,
        "idle_rss_mib": idle / MiB,
        "seconds": seconds,
        "levels": [int(c.shape[0]) for c in protos.centroids],
    }


def analytic_bytes(n: int, dim: int, m1: int, levels: int = 3, max_points_per_centroid: int = 1000) -> dict[str, int]:
    """What one K-means actor holds at its peak for an E-step over n rows, in bytes, by item.

    ``features``: the (n, d) float32 input. ``faiss_subsample``: faiss trains on a random subsample (a copy)
    when n > M_1 * max_points_per_centroid. ``per_row``: the faiss training search outputs (int64 + float32
    per row), the final assignment search and its copies, the (n, levels) int64 composed assignments.
    ``centroids``: all levels (1.5 MiB for 3000 x 128). These four are what ``hierarchical_kmeans`` alone
    needs (compare with the fit). ``service_copy``: the single-actor service clusters an id-sorted copy of
    the rows it received (``hierclr.service.actors``: ``self._x[order]``), one more (n, d) float32."""
    sample = min(n, m1 * max_points_per_centroid)
    return {
        "features": n * dim * 4,
        "faiss_subsample": sample * dim * 4 if n > sample else 0,
        "per_row": n * ((8 + 4) * 3 + 8 * levels),
        "centroids": sum(level_sizes(m1)) * dim * 4,
        "service_copy": n * dim * 4,
    }


def main() -> None:
    from hierclr.clustering import KMeansSettings  # one_point imports it too, before its idle RSS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="20000,50000,100000", help="comma list of N (rows)")
    ap.add_argument("--m1", default="1000,3000", help="comma list of M_1 (finest level; levels M_1, 2M_1/3, M_1/3)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--niter", type=int, default=KMeansSettings().niter)
    ap.add_argument("--nredo", type=int, default=1, help="restarts (time only; memory is the same)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimate-n", type=int, default=1_281_167, help="N of the analytic estimate (ImageNet-1k)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # "N,M1": child mode
    args = ap.parse_args()

    if args.one:
        n, m1 = (int(v) for v in args.one.split(","))
        print(json.dumps(one_point(n, m1, args.dim, args.niter, args.nredo, args.seed)))
        return

    rows = []
    for m1 in (int(v) for v in args.m1.split(",")):
        for n in (int(v) for v in args.n.split(",")):
            cmd = [sys.executable, __file__, "--one", f"{n},{m1}", "--dim", str(args.dim), "--niter", str(args.niter),
                   "--nredo", str(args.nredo), "--seed", str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"N={n:>8} M_1={m1:>5}: features {row['features_mib']:7.1f} MiB | RSS growth "
                  f"{row['rss_growth_mib']:7.1f} MiB | K-means extra {row['kmeans_extra_mib']:6.1f} MiB | "
                  f"{row['seconds']:6.1f} s", flush=True)

    print(f"\n{platform.processor() or platform.machine()}, d={args.dim}, niter={args.niter}, nredo={args.nredo}\n")
    print("| N | M_1 (levels) | features | peak RSS growth | K-means on top of features | time |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['m1']} ({'-'.join(map(str, r['sizes']))}) | {r['features_mib']:.1f} MiB | "
              f"{r['rss_growth_mib']:.1f} MiB | {r['kmeans_extra_mib']:.1f} MiB | {r['seconds']:.1f} s |")

    import numpy as np

    print()
    for m1 in sorted({r["m1"] for r in rows}):
        pts = [(r["n"], r["rss_growth_mib"] * MiB) for r in rows if r["m1"] == m1]
        if len(pts) < 2:
            continue
        b, a = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
        print(f"fit M_1={m1}: RSS growth = {a / MiB:.1f} MiB + {b:.0f} B x N "
              f"(features alone: {args.dim * 4} B x N); at N={args.estimate_n:,}: {(a + b * args.estimate_n) / MiB:.0f} MiB")

    print(f"\nanalytic, N={args.estimate_n:,}, d={args.dim}:")
    for m1 in sorted({r["m1"] for r in rows}):
        parts = analytic_bytes(args.estimate_n, args.dim, m1)
        alone = sum(v for k, v in parts.items() if k != "service_copy")
        print(f"  M_1={m1}: " + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in parts.items())
              + f" -> hierarchical_kmeans {alone / MiB:.0f} MiB, single-actor service "
              f"{(alone + parts['service_copy']) / MiB:.0f} MiB (+ the idle process, {rows[0]['idle_rss_mib']:.0f} MiB here)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
