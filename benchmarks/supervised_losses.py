"""Forward + backward time of the supervised losses versus the batch: VarCon is linear in N, SupCon and
LACLN (CLCE's contrastive term) build N x N similarity matrices.

For each N (rows of ``z``: all views of the gathered batch) a random L2-normalised ``(N, dim)`` leaf
``z`` and labels of ``N / views`` images drawn from ``classes`` classes (each image's views share its
label) are made once; then ``varcon_loss``, ``supcon_loss`` and ``lacln_loss`` (default arguments)
are timed, interleaved, as ``loss(z, labels).backward()``: a warm-up, then the median of the repeats
(fewer repeats where a point would exceed ``--budget`` seconds). Printed per N: the seconds, each
loss's time relative to its own time at the smallest N, and SupCon/VarCon and LACLN/VarCon::

    python benchmarks/supervised_losses.py --device cpu                 # 64 ... 4096 rows
    python benchmarks/supervised_losses.py --device cuda --batch-sizes 1024 4096 16384 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hierclr.losses.clce import lacln_loss
from hierclr.losses.supcon import supcon_loss
from hierclr.losses.varcon import varcon_loss

LOSSES: dict[str, Callable] = {"varcon": varcon_loss, "supcon": supcon_loss, "lacln": lacln_loss}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(n: int, dim: int, classes: int, views: int, device: torch.device, seed: int = 0):
    """``(z, labels)``: ``n`` unit rows (a leaf that requires grad) and the labels of ``n // views``
    images repeated once per view."""
    if n % views:
        raise ValueError(f"batch size {n} is not a multiple of --views {views}")
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device).requires_grad_()
    image_labels = torch.randint(0, classes, (n // views,), generator=g)
    return z, image_labels.repeat(views).to(device)


def time_once(loss_fn: Callable, z: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    z.grad = None
    sync(device)
    t0 = time.perf_counter()
    loss_fn(z, labels).backward()
    sync(device)
    return time.perf_counter() - t0


def time_point(z, labels, device, repeats: int, warmup: int, budget: float) -> dict[str, float]:
    """Median forward+backward seconds per loss at one N; the losses take turns every repeat."""
    for _ in range(warmup):
        for fn in LOSSES.values():
            time_once(fn, z, labels, device)
    times: dict[str, list[float]] = {name: [] for name in LOSSES}
    start = time.perf_counter()
    for i in range(repeats):
        for name, fn in LOSSES.items():
            times[name].append(time_once(fn, z, labels, device))
        if i >= 2 and time.perf_counter() - start > budget:  # at least 3 repeats, then stop at the budget
            break
    return {name: statistics.median(v) for name, v in times.items()} | {"repeats": len(times["varcon"])}


def print_table(rows: list[dict]) -> None:
    base = rows[0]
    head = (f"{'N':>6} | {'varcon s':>10} {'supcon s':>10} {'lacln s':>10} | {'varcon x':>9} {'supcon x':>9} "
            f"{'lacln x':>9} | {'supcon/varcon':>13} {'lacln/varcon':>12} | {'reps':>4}")
    print(head)
    print("-" * len(head))
    for r in rows:
        rel = {k: r[k] / base[k] for k in LOSSES}
        print(f"{r['n']:>6} | {r['varcon']:>10.5f} {r['supcon']:>10.5f} {r['lacln']:>10.5f} | "
              f"{rel['varcon']:>9.2f} {rel['supcon']:>9.2f} {rel['lacln']:>9.2f} | "
              f"{r['supcon'] / r['varcon']:>13.2f} {r['lacln'] / r['varcon']:>12.2f} | {r['repeats']:>4}")
    print(f"(x = time relative to the same loss at N = {base['n']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096],
                   help="rows N of z (all views)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--views", type=int, default=2, help="rows per image; the views of an image share its label")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget", type=float, default=10.0,
                   help="seconds per N after which the repeats stop (at least 3 repeats)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for n in sorted(args.batch_sizes):
        z, labels = make_batch(n, args.dim, args.classes, args.views, device)
        rows.append({"n": n} | time_point(z, labels, device, args.repeats, args.warmup, args.budget))
        print(f"N={n} done", flush=True)
    print_table(rows)
    if args.json:
        out = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
               else platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
               "dim": args.dim, "classes": args.classes, "views": args.views,
               "median_s": rows,
               "relative_to_smallest": [{"n": r["n"]} | {k: r[k] / rows[0][k] for k in LOSSES} for r in rows],
               "ratio_vs_varcon": [{"n": r["n"], "supcon": r["supcon"] / r["varcon"],
                                    "lacln": r["lacln"] / r["varcon"]} for r in rows]}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
