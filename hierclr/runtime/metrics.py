"""Cross-rank averaging of per-step metrics, summing of counts and gathering of small objects (cluster statistics
come with the E-step: ``EStepStats``)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class MetricAverager:
    """Sums detached step metrics on their device (no host sync per step); :meth:`mean` averages over the
    steps of every rank (one all-reduce) and returns plain floats."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0

    def add(self, metrics: dict[str, Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.steps += 1

    def mean(self) -> dict[str, float]:
        keys = sorted(self.sums)
        if not keys:
            return {}
        device = self.sums[keys[0]].device
        vec = torch.stack([self.sums[k].to(device) for k in keys] + [torch.tensor(float(self.steps), device=device)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
        steps = max(float(vec[-1]), 1.0)
        return {k: float(v) / steps for k, v in zip(keys, vec[:-1].tolist())}


def sum_over_ranks(counts: Tensor) -> Tensor:
    """``counts`` summed over every rank (one all-reduce, on a copy; a collective: every rank calls it with the
    same shape); without a process group, ``counts`` itself. Counts add up; ratios of them do not."""
    if dist.is_available() and dist.is_initialized():
        counts = counts.clone()
        dist.all_reduce(counts)
    return counts


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order (a collective: every rank calls it); ``[obj]`` without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
