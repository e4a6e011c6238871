"""The contract between the one training engine (:mod:`hierclr.runtime`) and a training method.

A method is two small classes in one module of :mod:`hierclr.methods`:

* a :class:`Plan` (driver side, on the Ray driver): which data streams the run needs, what to check before any
  worker starts, which services to start (the E-step's clustering actors), MLflow tags, and the artifacts
  logged once the run is over;
* a :class:`Method` (worker side, in every Ray Train worker): the network, its parameter groups and lr
  schedule, and the hooks the epoch loop calls in order::

      build -> (fresh run: init_weights, before_training) | (resume: restore)
      for each epoch: set_lr -> before_epoch (E-step) -> step x N -> after_train -> evaluate (when due)
                      -> best / checkpoint / report (the loop's own)

The loop (:func:`hierclr.runtime.worker.train_loop_per_worker`) owns everything every method does the same
way: DDP, restore and checkpoints, the epoch clock of the augmentations, metric averaging, MLflow, the progress
line and the sweep's early stopping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hierclr.io.checkpoint import TrainingState
from hierclr.runtime.context import RunContext, WorkerEnv


def eval_due(every: int, epoch: int, last: int) -> bool:
    """Evaluate after ``epoch``? Every ``every`` epochs (0: never on the way) and always after the run's last epoch
    ``last`` (the config's last, or ``--stop-after-epoch``)."""
    return (every > 0 and (epoch + 1) % every == 0) or epoch == last


def fraction_ids(source, data) -> np.ndarray | None:
    """The dataset ids a run trains on under ``data.fraction`` (sorted; a seeded draw of that fraction of every
    class of ``source``, unlabelled rows as one more class), read from the labels alone; None: every row."""
    if data.fraction >= 1:
        return None
    from hierclr.eval.subsets import per_class_subset

    ids, labels = source.labels()
    return per_class_subset(ids, labels, data.fraction, seed=data.fraction_seed, unlabelled=True)


class Method:
    """Worker-side hooks. Subclasses set ``ddp_kwargs`` and implement :meth:`build`, :meth:`param_groups`,
    :meth:`set_lr`, :meth:`step`, :meth:`evaluate`, :meth:`best_record` and :meth:`save_best`."""

    ddp_kwargs: ClassVar[dict[str, Any]] = {}
    select_metric: str = "acc/top1"  # the epoch metric that picks the best model

    def __init__(self, cfg, run: RunContext, env: WorkerEnv, tracker=None) -> None:
        self.cfg, self.run, self.env, self.tracker = cfg, run, env, tracker

    # -- the network
    def build(self) -> nn.Module:
        raise NotImplementedError

    def init_weights(self, core: nn.Module) -> None:
        """Fresh runs only: starting weights from elsewhere (``model.init``)."""

    def restore(self, state: TrainingState) -> None:
        """Resumed runs only: method state kept in the checkpoint beside the weights (prototypes)."""

    def param_groups(self, core: nn.Module) -> list[dict] | Any:
        raise NotImplementedError

    def set_lr(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """Set this epoch's lr in every group; returns the lr reported as ``lr``."""
        raise NotImplementedError

    # -- the epoch
    def before_training(self, model: nn.Module) -> dict[str, float]:
        """Fresh runs only, before epoch 0 (HCAL's class-mean prototypes); metrics reported with epoch 0."""
        return {}

    def before_epoch(self, model: nn.Module, epoch: int, row: dict[str, float]) -> None:
        """Before the M-step (the E-step); writes its metrics and timings into ``row``."""

    def train_mode(self, core: nn.Module) -> None:
        """After ``model.train()``: parts that stay in eval mode (a frozen trunk's BatchNorm)."""

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, views: list[torch.Tensor],
             generator: torch.Generator, epoch: int) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch's views; returns detached metrics (averaged over the epoch)."""
        raise NotImplementedError

    def after_train(self) -> dict[str, float]:
        """After the epoch's last step: metrics summed over the epoch (selection quality)."""
        return {}

    def eval_due(self, epoch: int, last: int) -> bool:
        return eval_due(self.cfg.eval.every, epoch, last)

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    # -- what the loop keeps
    def checkpoint_extras(self) -> dict[str, Any]:
        """Fields of :class:`TrainingState` beyond weights, optimizer and history (``prototypes``)."""
        return {}

    def best_record(self, epoch: int, value: float) -> dict:
        raise NotImplementedError

    def best_value(self, best: dict | None) -> float | None:
        raise NotImplementedError

    def save_best(self, core: nn.Module, best: dict) -> None:
        raise NotImplementedError

    def epoch_line(self, row: dict[str, float]) -> str:
        raise NotImplementedError


@dataclass
class Prepared:
    """What a :class:`Plan` resolved on the driver for one run."""

    streams: dict  # name -> hierclr.data.streams.ImageStream ("train" first)
    run_fields: dict  # extra RunContext fields (level_map, num_classes, has_val, ...)
    tags: dict[str, str]
    header: str  # the run's one-line description (method, workers, images, epochs)
    train_src: Any = None
    extras: dict = field(default_factory=dict)


class Plan:
    """Driver-side hooks of a method (see the module docstring). ``cfg`` is the validated config."""

    name: ClassVar[str]  # the key of hierclr.methods.PLANS the workers look it up by
    method: ClassVar[type[Method]]
    config_cls: ClassVar[type]
    resume_sections: ClassVar[tuple[str, ...]] = ("model",)  # config sections a checkpoint must share

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.rows_checked = False  # data.train's row count passed check_rows

    def worker_gpus(self) -> float:
        """Each Train worker's GPU request (0: CPU workers)."""
        res = self.cfg.resources
        return res.gpus_per_worker if res.use_gpu else 0.0

    def needs(self) -> tuple[float, float]:
        """(CPUs, GPUs) one run holds while it trains."""
        res = self.cfg.resources
        return res.num_workers * res.cpus_per_worker + self.cfg.data.num_cpus, res.num_workers * self.worker_gpus()

    needs_what: ClassVar[str] = "resources.num_workers x cpus_per_worker/gpus_per_worker + data.num_cpus"

    def check_rows(self, num_rows: int) -> None:
        """Fail when ``data.train``'s ``num_rows`` images cannot feed the run: fewer than one global batch.
        Called before Ray when the format gives its count without Ray (see
        :func:`hierclr.runtime.runs.check_row_count`), else by :meth:`prepare`; remembers that it passed."""
        batch = self.cfg.optim.batch_size
        if num_rows < batch:
            raise ValueError(f"data.train ({self.cfg.data.train}) has {num_rows} images, fewer than one global batch "
                             f"(optim.batch_size={batch})")
        self.rows_checked = True

    def open_splits(self):
        """``(train source, val source or None)``: the run's ``data.train`` and ``data.val`` as readers."""
        from hierclr.data import open_source
        from hierclr.runtime.runs import data_path

        d = self.cfg.data
        train, val = (open_source(data_path(p, self.cfg), format=d.format, hierarchy=d.hierarchy,
                                  verify=d.verify_shards) if p else None for p in (d.train, d.val))
        return train, val

    def prepare(self, start_epoch: int) -> Prepared:
        raise NotImplementedError

    def start_services(self, name: str, prepared: Prepared) -> dict:
        """Actors the workers talk to (started after the resource check); RunContext fields naming them."""
        return {}

    def stop_services(self) -> None:
        """Stop what :meth:`start_services` started (also when the run failed)."""

    def final_artifacts(self, tracker, state: TrainingState, run_dir: str, prepared: Prepared, bad: list) -> None:
        """Artifacts logged once from the last checkpoint (tracker enabled)."""
