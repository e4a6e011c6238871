"""What the driver hands every Ray Train worker, and what each worker knows about itself.

:class:`RunContext` holds plain values (it travels in ``train_loop_config``); :class:`WorkerEnv` is built by
each worker from Ray Train's context. Methods (:mod:`hierclr.methods`) read both, never Ray directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RunContext:
    """What the driver resolved for the workers, the same for every method."""

    run_dir: str
    clock_name: str
    tracking_uri: str | None
    mlflow_run_id: str | None
    level_map: list | None = None  # (C, L): class c's label at every hierarchy level; None: unlabelled data
    num_classes: int = 0
    num_rows: int = 0  # images in the training split (the E-step's id range)
    has_val: bool = False
    service_name: str | None = None  # the E-step's clustering service (contrastive methods with prototypes)
    resume_from: str | None = None  # a checkpoint to start from when Ray Train has none (--resume PATH)
    stop_after_epoch: int | None = None
    stop_board: str | None = None  # sweep trials: the early-stopping board (hierclr.runtime.early_stop)
    stop_key: str | None = None  # ... and this trial's id on it
    verbose: bool = False  # hierclr -v: workers keep library INFO logs on the console (hierclr.runtime.console)


@dataclass(frozen=True)
class WorkerEnv:
    """This worker's place in the group and the device settings every step uses."""

    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None  # bf16 autocast on GPUs with optim.amp; None: fp32
    channels_last: bool
    per_worker_batch: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"
