"""HCSC training step vs MoCo v2 step on the same model, batch and queue: the cost of selection.

Times ``hcsc_train_step`` (forward, loss, backward, SGD, enqueue) with
  * MoCo v2: InfoNCE only (``prototypes=None``),
  * HCSC without selection (IS/PS off: ICSC/PCSC as plain InfoNCE + ProtoNCE over the hierarchy),
  * HCSC full, before the selection cache (``hcsc_full_softmax``: Eq. 4's softmax of every queue row over
    every prototype, and Eq. 7's over the parents, recomputed every step: O(Q x K x d) per level),
  * HCSC full as training runs it (``hcsc``: the epoch's :class:`~hierclr.losses.SelectionCache`, refreshed for
    the enqueued keys inside the step: O(B x Q x d) per level),
and reports each as a ratio to the MoCo v2 step from the same run (same process, same inputs, variants
interleaved round by round), in wall seconds and in CPU seconds of the process (``--threads 1`` makes the
latter a per-step compute cost that other load on a shared machine barely moves). The cache's
once-per-epoch build is timed apart (``cache_build_s``).

It also prints, analytically, the FLOPs and bytes of the selection before and after the cache for the
per-GPU batch of the official ImageNet run (ResNet-50, 224 px, 32 images per GPU, 8 GPUs, queue 16384,
3000-2000-1000 prototypes), next to the FLOPs of the ResNet-50 MoCo step counted by
``torch.utils.flop_counter`` on the meta device (``--no-analytic`` skips it).

    python benchmarks/bench_train_step.py                      # CPU: resnet18, 32 px, batch 64
    python benchmarks/bench_train_step.py --device cuda --backbone resnet50 --size 224 --batch 256 \
        --queue 16384 --sizes 3000,2000,1000 --num-images 1281167
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from hierclr.clustering.prototypes import Prototypes, compose_assignments
from hierclr.config.pretrain import HCSCLossConfig
from hierclr.losses import HCSCObjective
from hierclr.methods.contrastive_step import hcsc_train_step
from hierclr.models import MoCo


def random_prototypes(num_images: int, sizes: list[int], dim: int, device, seed: int = 0) -> Prototypes:
    """A valid random tree (normalised centroids, random parents, phi around 0.2) for timing only."""
    g = torch.Generator().manual_seed(seed)
    cents = [F.normalize(torch.randn(k, dim, generator=g), dim=1) for k in sizes]
    parents = [torch.randint(0, sizes[i + 1], (sizes[i],), generator=g) for i in range(len(sizes) - 1)]
    level0 = torch.randint(0, sizes[0], (num_images,), generator=g)
    phi = [0.15 + 0.1 * torch.rand(k, generator=g) for k in sizes]
    return Prototypes(cents, parents, phi, compose_assignments(level0, parents), epoch=0).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def selection_cost(batch: int, global_batch: int, queue: int, sizes: list[int], dim: int,
                   steps_per_epoch: int, elem_bytes: int = 4) -> dict[str, dict[str, float]]:
    """FLOPs and bytes moved per training step (per GPU) by HCSC's keep probabilities, before and after the cache.

    Counted: matmuls at 2 FLOPs per multiply-add; elementwise work at one FLOP per op. Bytes: the
    memory traffic of the big intermediates (a (rows, K) logits matrix is written once and read by
    ``logsumexp`` in two passes, then read and written again by the subtraction: 5 passes; the (B, Q)
    probabilities: written by the matmul, read and written by the scale, the exponential and ``1 -``:
    7 passes), not cache-resident operands. Levels: ``sizes`` (K_0, ..., K_{L-1}).

    before: ICSC's (Q, K_l) softmax per level and PCSC's (K_n, K_{n+1}) softmax below the top, every step.
    after: per level ``C[y_i] . queue_j`` (B, Q) and its exponential; the enqueued global batch's
    normalisers (G, K_l); PCSC reads B rows of the cached (K_n, K_{n+1}) table; plus the per-epoch rebuild
    (the whole queue, and PCSC's tables) spread over ``steps_per_epoch``.
    """
    def softmax_rows(rows: int, k: int) -> tuple[float, float]:  # logits + log-softmax over k columns
        return 2.0 * rows * k * dim + 5.0 * rows * k, 5.0 * rows * k * elem_bytes

    b_flops = b_bytes = 0.0
    for k in sizes:
        f, by = softmax_rows(queue, k)
        b_flops, b_bytes = b_flops + f + 2.0 * batch * queue, b_bytes + by + 2.0 * batch * queue * elem_bytes
    for n in range(len(sizes) - 1):
        f, by = softmax_rows(sizes[n], sizes[n + 1])
        b_flops, b_bytes = b_flops + f + 2.0 * batch * sizes[n], b_bytes + by + 2.0 * batch * sizes[n] * elem_bytes
    a_flops = a_bytes = 0.0
    for k in sizes:
        a_flops += 2.0 * batch * queue * dim + 4.0 * batch * queue  # C[y] @ queue.T, scale, -lse, exp, 1 -
        a_bytes += 7.0 * batch * queue * elem_bytes + queue * (dim + 1) * elem_bytes
        f, by = softmax_rows(global_batch, k)  # lse of the enqueued keys
        a_flops, a_bytes = a_flops + f, a_bytes + by
        f, by = softmax_rows(queue, k)  # the epoch's rebuild, amortised
        a_flops, a_bytes = a_flops + f / steps_per_epoch, a_bytes + by / steps_per_epoch
    for n in range(len(sizes) - 1):
        a_flops += 2.0 * batch * sizes[n]
        a_bytes += 2.0 * batch * sizes[n] * elem_bytes
        f, by = softmax_rows(sizes[n], sizes[n + 1])
        a_flops, a_bytes = a_flops + f / steps_per_epoch, a_bytes + by / steps_per_epoch
    return {"before": {"flops": b_flops, "bytes": b_bytes}, "after": {"flops": a_flops, "bytes": a_bytes}}


def encoder_step_flops(backbone: str, size: int, batch: int, queue: int) -> float:
    """FLOPs of one MoCo v2 step's encoders (query forward + backward, key forward) + InfoNCE, counted by
    ``torch.utils.flop_counter`` on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hierclr.losses import info_nce

    with torch.device("meta"):
        model = MoCo(backbone, queue_size=queue, cifar_stem=size <= 64)
        im_q, im_k = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        q, k = model(im_q, im_k)
        info_nce(q, k, model.queue).backward()
    return float(counter.get_total_flops())


def analytic_report(batch: int = 32, world: int = 8, queue: int = 16384, sizes=(3000, 2000, 1000), dim: int = 128,
                    num_images: int = 1281167) -> dict:
    """The official ImageNet setting per GPU: selection FLOPs / bytes before and after, against the step."""
    global_batch = batch * world
    cost = selection_cost(batch, global_batch, queue, list(sizes), dim, steps_per_epoch=num_images // global_batch)
    step = encoder_step_flops("resnet50", 224, batch, queue)
    out = {"per_gpu_batch": batch, "gpus": world, "queue": queue, "sizes": list(sizes),
           "moco_step_gflops": round(step / 1e9, 1)}
    for when in ("before", "after"):
        c = cost[when]
        out[f"selection_{when}"] = {"gflops": round(c["flops"] / 1e9, 3), "mbytes": round(c["bytes"] / 1e6, 1),
                                    "flops_vs_moco_step": round(c["flops"] / step, 5)}
    return out


class Variant:
    """One variant's own model copy, optimizer, step generator and selection cache: rounds interleave variants
    step by step without one variant's enqueues touching another's queue (or making its cache stale)."""

    def __init__(self, model, objective, protos, device, amp, cached: bool) -> None:
        self.model, self.objective, self.protos, self.device, self.amp = model, objective, protos, device, amp
        self.opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.cache = objective.selection_cache(protos, model.queue) if cached else None

    def step(self, batch) -> tuple[float, float]:
        """One timed step: (wall seconds, CPU seconds of this process)."""
        im_q, im_k, ids = batch
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        hcsc_train_step(self.model, self.objective, self.opt, im_q, im_k, ids, self.protos, generator=self.gen,
                        amp_dtype=self.amp, selection_cache=self.cache)
        sync(self.device)
        return time.perf_counter() - t0, time.process_time() - c0


def time_steps(model, objective, protos, batch, device, steps: int, warmup: int, amp,
               cached: bool = False) -> list[float]:
    """``warmup`` untimed then ``steps`` timed steps of one variant on ``model`` itself (gpu_acceptance)."""
    run = Variant(model, objective, protos, device, amp, cached)
    for _ in range(warmup):
        run.step(batch)
    return [run.step(batch)[0] for _ in range(steps)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--sizes", default="1000,500,100")
    p.add_argument("--num-images", type=int, default=50000)
    p.add_argument("--steps", type=int, default=2, help="timed steps of a variant per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant before the rounds")
    p.add_argument("--rounds", type=int, default=8, help="alternate the variants this many times")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--no-analytic", action="store_true", help="skip the ResNet-50 FLOP / byte count")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1: CPU seconds per step are "
                                                              "robust to other load on a shared machine)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    model = MoCo(args.backbone, queue_size=args.queue, cifar_stem=args.size <= 64).to(device)
    model.queue_ids.copy_(torch.randint(0, args.num_images, (args.queue,)))  # a full queue of real ids
    protos = random_prototypes(args.num_images, sizes, model.dim, device)
    im_q = torch.randn(args.batch, 3, args.size, args.size, device=device)
    im_k = torch.randn(args.batch, 3, args.size, args.size, device=device)
    ids = torch.randint(0, args.num_images, (args.batch,), device=device)
    amp = torch.bfloat16 if args.amp else None
    hcsc = HCSCObjective(HCSCLossConfig())
    variants = {  # name: (objective, prototypes, selection cache)
        "moco_v2": (HCSCObjective(HCSCLossConfig(warmup_epochs=0)), None, False),
        "hcsc_no_selection": (HCSCObjective(HCSCLossConfig(instance_selection=False, prototype_selection=False)),
                              protos, False),
        "hcsc_full_softmax": (hcsc, protos, False),
        "hcsc": (hcsc, protos, True),
    }
    runs = {name: Variant(copy.deepcopy(model), obj, pr, device, amp, cached)
            for name, (obj, pr, cached) in variants.items()}
    batch = (im_q, im_k, ids)
    for run in runs.values():
        for _ in range(args.warmup):
            run.step(batch)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):  # interleave so drift (thermal, other load) hits every variant alike
        for name, run in runs.items():
            for _ in range(args.steps):
                wall, used = run.step(batch)
                times[name].append(wall)
                cpu[name].append(used)
    sync(device)
    t0 = time.perf_counter()
    hcsc.selection_cache(protos, model.queue)
    sync(device)
    cache_build_s = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out = {"device": str(device), "backbone": args.backbone, "size": args.size, "batch": args.batch,
           "queue": args.queue, "sizes": sizes, "steps_per_variant": args.steps * args.rounds,
           "median_step_s": {k: round(v, 5) for k, v in med.items()},
           "ratio_vs_moco_v2": {k: round(v / med["moco_v2"], 3) for k, v in med.items()},
           "threads": torch.get_num_threads(),
           "median_step_cpu_s": {k: round(v, 5) for k, v in med_cpu.items()},
           "cpu_ratio_vs_moco_v2": {k: round(v / med_cpu["moco_v2"], 3) for k, v in med_cpu.items()},
           "cache_build_s": round(cache_build_s, 4)}
    if not args.no_analytic:
        out["resnet50_224_per_gpu_batch_32"] = analytic_report(sizes=tuple(sizes), queue=args.queue)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
