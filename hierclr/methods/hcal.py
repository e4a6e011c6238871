"""HCAL on the supervised engine (``hierclr hcal``): level prototypes, per-level InfoNCE, adaptive level weights.

What differs from finetune (:mod:`hierclr.methods.supervised`): the network (:class:`~hierclr.models.HCALNet`:
a projection and one learnable prototype matrix per level), the parameter groups (level-l prototypes at
``prototype_lr * factor**l``, no weight decay), the step (:func:`~hierclr.methods.supervised_step.hcal_step_loss`,
the prototype noise drawn from the step's generator), the label space (a hierarchy of at least 2 levels) and,
with ``hcal.init_prototypes``, prototypes set from the class means of the initial network before epoch 0
(reported as ``init/*`` with epoch 0). Evaluation adds the hierarchical violation rate.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hierclr.methods.supervised import Supervised, SupervisedPlan, evaluate
from hierclr.methods.supervised_step import hcal_step_loss
from hierclr.models.classifiers import HCALNet


def build_hcal_network(cfg, sizes: list[int]) -> HCALNet:
    m, h = cfg.model, cfg.hcal
    return HCALNet(m.backbone, sizes, feat_dim=h.feat_dim, hidden_dim=h.hidden_dim, perturbation=h.perturbation,
                   cifar_stem=m.cifar_stem)


def hcal_head_groups(head, cfg) -> list[dict]:
    """The head's SGD groups: the projection at the head lr, level l's prototypes at
    ``prototype_lr * prototype_lr_factor**l`` without weight decay."""
    o = cfg.optim
    groups = [{"params": head.projection_parameters(), "peak_lr": o.lr * o.head_lr_scale, "name": "projection"}]
    for level in range(head.num_levels):
        lr = cfg.hcal.prototype_lr * cfg.hcal.prototype_lr_factor ** level
        groups.append({"params": [head.prototype_parameters(level)], "peak_lr": lr, "weight_decay": 0.0,
                       "name": f"prototypes{level}"})
    return groups


@torch.no_grad()
def class_means(model: nn.Module, batches, num_classes: int, device) -> torch.Tensor:
    """Mean normalised level-0 feature of every fine class over this worker's rows, summed over ranks;
    classes without a row are NaN rows (``HCALHead.init_prototypes`` keeps their random prototype)."""
    core = model.module if hasattr(model, "module") else model
    was = core.training
    core.eval()
    sums = torch.zeros(num_classes, core.head.feat_dim, device=device)
    counts = torch.zeros(num_classes, device=device)
    for x, _ids, labels in batches:
        x, labels = x.to(device), labels.to(device)
        keep = labels >= 0
        f = core(x[keep]).float()
        sums.index_add_(0, labels[keep], f)
        counts.index_add_(0, labels[keep], torch.ones_like(labels[keep], dtype=torch.float))
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    core.train(was)
    means = sums / counts.clamp_min(1)[:, None]
    means[counts == 0] = float("nan")
    return means.cpu()


class HCAL(Supervised):
    """HCAL in the epoch loop."""

    def step_loss(self, model, x, labels, generator):
        return hcal_step_loss(model, self.cfg, x, labels, generator=generator)

    def before_training(self, model) -> dict[str, float]:
        """``hcal.init_prototypes``: level-0 prototypes from the class means of the training embeddings (centered
        or not), parents from their children; then the untrained network read out by them."""
        import ray.train

        cfg, env = self.cfg, self.env
        if cfg.hcal.init_prototypes == "random":
            return {}
        core = model.module if hasattr(model, "module") else model
        t0 = time.perf_counter()
        means = class_means(model, self._batches(ray.train.get_dataset_shard("embed")), self.level_map_np.shape[0],
                            env.device)
        if cfg.hcal.init_prototypes == "centered_class_means":
            seen = ~means.isnan().any(1)
            means[seen] -= means[seen].mean(0)
        core.head.init_prototypes(means.to(env.device), self.level_map_np)
        # before any step: the initial network read out by its class means (a nearest-class-mean classifier)
        scores = {f"init/{k}": v for k, v in evaluate(
            model, cfg, self._batches(self.val_it), self.level_map, self.parents, env.device).items()}
        with torch.no_grad():
            p0 = torch.nn.functional.normalize(core.head.prototype_parameters(0).detach(), dim=1)
            cos = p0 @ p0.T
            off = ~torch.eye(len(p0), dtype=torch.bool, device=cos.device)
            scores["init/prototype_cos_mean"] = float(cos[off].mean())
        if env.rank == 0:
            print(f"hierclr | HCAL prototypes from the class means of {cfg.model.init} "
                  f"({int((~means.isnan().any(1)).sum())} classes, {time.perf_counter() - t0:.1f}s): before training "
                  f"level-0 accuracy {scores.get('init/acc/level0', float('nan')):.4f}, mean cosine between "
                  f"level-0 prototypes {scores['init/prototype_cos_mean']:.3f}", flush=True)
        return scores


class HCALPlan(SupervisedPlan):
    """The driver side of ``hierclr hcal``."""

    name = "hcal"
    method = HCAL

    def _label_space(self, train_src, val_src) -> np.ndarray:
        level_map = super()._label_space(train_src, val_src)
        if level_map.shape[1] < 2:
            raise ValueError(f"`hierclr hcal` needs a label hierarchy with at least 2 levels; data.train "
                             f"({self.cfg.data.train}) has none: give data.hierarchy (JSON or edge list) or prepare "
                             "the data with one")
        return level_map

    def extra_streams(self, train_src, scfg, start_epoch: int) -> dict:
        """The class means of ``hcal.init_prototypes`` read the training split once, in eval transform."""
        from hierclr.data import embed_stream

        if self.cfg.hcal.init_prototypes != "random" and start_epoch == 0:
            return {"embed": embed_stream(train_src, scfg)}
        return {}
