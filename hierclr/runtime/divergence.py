"""Stop a diverging run: a non-finite loss or weight ends it with the epoch, step, lr and loss terms, before any
checkpoint, best model or MLflow model is written from it.

Measured problem (issue 18): ``base_lr=1e6`` with MoCo gave a NaN loss in every epoch, all weights non-finite,
exit 0, and the NaN encoder logged as a model. The check must not cost a host sync per step (on a GPU that
stalls the pipeline), so :class:`DivergenceGuard` keeps, on the device, the first step whose loss terms were not
all finite and those terms (``torch.where``: no ``.item()``), and the host looks once every
:data:`CHECK_EVERY` steps and at the end of the epoch (:meth:`DivergenceGuard.check`, a collective: every rank
calls it at the same step, as DDP already keeps them in step). At the end of the epoch the check also looks at
the weights, so that the last step's update cannot slip a non-finite tensor into the checkpoint.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

CHECK_EVERY = 100  # steps between host-side looks during an epoch (one small all-gather each)
NONE = -1


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became non-finite; the message names the epoch, step, lr and loss terms."""


class DivergenceGuard:
    """Watches one epoch's step metrics (the ``loss/*`` terms) for non-finite values, on their device."""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr
        self.first_step: Tensor | None = None  # 0-d: the first bad step (1-based), NONE while all were finite
        self.terms: dict[str, Tensor] = {}  # the loss terms of that step

    def add(self, step: int, metrics: dict[str, Tensor]) -> None:
        """Record step ``step``'s metrics (1-based); device ops only."""
        losses = {k: v.detach().float().reshape(()) for k, v in metrics.items() if k.startswith("loss/")
                  and v.numel() == 1}
        if not losses:
            return
        device = next(iter(losses.values())).device
        if self.first_step is None:
            self.first_step = torch.full((), NONE, dtype=torch.long, device=device)
        finite = torch.stack([torch.isfinite(v) for v in losses.values()]).all()
        newly = (~finite) & (self.first_step == NONE)
        self.first_step = torch.where(newly, torch.full_like(self.first_step, step), self.first_step)
        for k, v in losses.items():
            self.terms[k] = torch.where(newly, v, self.terms[k]) if k in self.terms else torch.where(
                newly, v, torch.full_like(v, math.nan))

    def local_report(self, model: nn.Module | None = None) -> dict | None:
        """This rank's finding (host values) or None when everything was finite."""
        step = int(self.first_step) if self.first_step is not None else NONE
        if step != NONE:
            return {"step": step, "terms": {k: float(v) for k, v in self.terms.items()}}
        if model is not None:
            bad = nonfinite_tensors(model)
            if bad:
                return {"step": None, "tensors": bad}
        return None

    def check(self, step: int, model: nn.Module | None = None) -> None:
        """Raise :class:`TrainingDivergedError` on every rank when any rank saw a non-finite loss term (or, with
        ``model``: the end of the epoch, a non-finite weight or buffer). A collective: every rank calls it."""
        from hierclr.runtime.metrics import gather_objects

        self.raise_if_any(step, gather_objects(self.local_report(model)))

    def raise_if_any(self, step: int, reports: list[dict | None]) -> None:
        """Raise for the earliest bad step among the ranks' reports (:meth:`local_report`, in rank order); else nothing."""
        found = [(rank, r) for rank, r in enumerate(reports) if r is not None]
        if not found:
            return
        with_step = [(rank, r) for rank, r in found if r["step"] is not None]
        if with_step:
            rank, r = min(with_step, key=lambda t: t[1]["step"])
            terms = ", ".join(f"{k}={v:.6g}" for k, v in sorted(r["terms"].items()))
            raise TrainingDivergedError(
                f"training diverged: non-finite loss at epoch {self.epoch}, step {r['step']} (rank {rank}), "
                f"lr {self.lr:.6g}: {terms}. Nothing of this epoch was checkpointed; lower optim.base_lr "
                "(or check the data), then resume from the last checkpoint")
        rank, r = found[0]
        raise TrainingDivergedError(
            f"training diverged: non-finite weights after epoch {self.epoch} (step {step}, rank {rank}), lr "
            f"{self.lr:.6g}, though every loss was finite: {', '.join(r['tensors'][:5])}. Nothing of this epoch "
            "was checkpointed; lower optim.base_lr, then resume from the last checkpoint")


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model`` holding a non-finite value (one host sync)."""
    tensors = [(k, v) for k, v in model.state_dict().items() if torch.is_floating_point(v)]
    if not tensors:
        return []
    flags = torch.stack([torch.isfinite(v).all() for _, v in tensors]).cpu()
    return [k for (k, _), ok in zip(tensors, flags.tolist()) if not ok]
