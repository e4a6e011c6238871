"""HCSC training step vs MoCo v2 step on the same model, batch and queue: the cost of selection.

Times ``hcsc_train_step`` (forward, loss, backward, SGD, enqueue) with
  * MoCo v2: InfoNCE only (``prototypes=None``),
  * HCSC without selection (IS/PS off: ICSC/PCSC as plain InfoNCE + ProtoNCE over the hierarchy),
  * HCSC full (ICSC + PCSC with Bernoulli selection),
and reports each as a ratio to the MoCo v2 step from the same run (same process, same inputs).

    python benchmarks/bench_train_step.py                      # CPU: resnet18, 32 px, batch 64
    python benchmarks/bench_train_step.py --device cuda --backbone resnet50 --size 224 --batch 256 \
        --queue 16384 --sizes 3000,2000,1000 --num-images 1281167
"""
from __future__ import annotations

import argparse
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


def time_steps(model, objective, protos, batch, device, steps: int, warmup: int, amp) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    im_q, im_k, ids = batch
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        hcsc_train_step(model, objective, opt, im_q, im_k, ids, protos, generator=gen, amp_dtype=amp)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--sizes", default="1000,500,100")
    p.add_argument("--num-images", type=int, default=50000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternate the variants this many times")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    args = p.parse_args()
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    model = MoCo(args.backbone, queue_size=args.queue, cifar_stem=args.size <= 64).to(device)
    model.queue_ids.copy_(torch.randint(0, args.num_images, (args.queue,)))  # a full queue of real ids
    protos = random_prototypes(args.num_images, sizes, model.dim, device)
    im_q = torch.randn(args.batch, 3, args.size, args.size, device=device)
    im_k = torch.randn(args.batch, 3, args.size, args.size, device=device)
    ids = torch.randint(0, args.num_images, (args.batch,), device=device)
    amp = torch.bfloat16 if args.amp else None
    variants = {
        "moco_v2": (HCSCObjective(HCSCLossConfig(warmup_epochs=0)), None),
        "hcsc_no_selection": (HCSCObjective(HCSCLossConfig(instance_selection=False, prototype_selection=False)),
                              protos),
        "hcsc": (HCSCObjective(HCSCLossConfig()), protos),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):  # interleave so drift (thermal, other load) hits every variant alike
        for name, (obj, pr) in variants.items():
            times[name] += time_steps(model, obj, pr, (im_q, im_k, ids), device, args.steps, args.warmup, amp)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"device": str(device), "backbone": args.backbone, "size": args.size, "batch": args.batch,
           "queue": args.queue, "sizes": sizes, "steps_per_variant": args.steps * args.rounds,
           "median_step_s": {k: round(v, 5) for k, v in med.items()},
           "ratio_vs_moco_v2": {k: round(v / med["moco_v2"], 3) for k, v in med.items()}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
