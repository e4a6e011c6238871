"""The per-worker loop of ``hierclr finetune`` / ``hierclr hcal`` on Ray Train.

Per epoch: the ``train`` stream's views through :func:`finetune_loss` or :func:`hcal_step_loss` (lr on
a warm-up + cosine schedule per parameter group), then every ``eval.every`` epochs the ``val`` split is
predicted (each row on exactly one worker) and rank 0 scores it: top-1/top-5, accuracy per hierarchy
level and (HCAL) the hierarchical violation rate. ``ray.train.report`` every epoch, with a checkpoint
every ``checkpoint.every`` epochs; rank 0 logs to MLflow. Same checkpoint format, resume rules,
cooperative early stopping and progress line as pretraining (:mod:`hierclr.runtime.worker`).
"""
from __future__ import annotations

import functools
import io
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hierclr.config.supervised import SupervisedConfig
from hierclr.data.streams import finish_views
from hierclr.data.transforms import MultiViewAugment
from hierclr.eval.hierarchical import hierarchy_metrics, parent_tables
from hierclr.io.checkpoint import TrainingState, set_rng_state
from hierclr.io.fs import resolve
from hierclr.methods.supervised_step import finetune_loss, hcal_step_loss, predict
from hierclr.models.classifiers import HCALNet, SupervisedNet
from hierclr.runtime.artifacts import log_curves
from hierclr.runtime.metrics import MetricAverager
from hierclr.runtime.worker import (
    eval_batches,
    gather_objects,
    report_epoch,
    restore_state,
    step_generator,
    stopped_by_sweep,
)


@dataclass(frozen=True)
class SupervisedRunContext:
    """What the driver resolved for the workers (plain values: it travels in ``train_loop_config``)."""

    run_dir: str
    clock_name: str
    level_map: list  # (C, L) class c's label at every level (L = 1 without a hierarchy)
    tracking_uri: str | None
    mlflow_run_id: str | None
    resume_from: str | None = None
    stop_after_epoch: int | None = None
    stop_board: str | None = None
    stop_key: str | None = None


def level_sizes(level_map: np.ndarray) -> list[int]:
    return [int(level_map[:, level].max()) + 1 for level in range(level_map.shape[1])]


def build_network(cfg: SupervisedConfig, level_map: np.ndarray) -> nn.Module:
    m = cfg.model
    sizes = level_sizes(level_map)
    if cfg.task == "hcal":
        h = cfg.hcal
        net = HCALNet(m.backbone, sizes, feat_dim=h.feat_dim, hidden_dim=h.hidden_dim, perturbation=h.perturbation,
                      cifar_stem=m.cifar_stem)
    else:
        dim = None if cfg.loss.name == "ce" else m.dim  # CE never reads the embedding
        net = SupervisedNet(m.backbone, sizes[0], dim=dim, hidden_dim=m.hidden_dim, cifar_stem=m.cifar_stem)
        if m.classifier_init_std is not None:
            nn.init.normal_(net.classifier.weight, 0.0, m.classifier_init_std)
            nn.init.zeros_(net.classifier.bias)
    if m.freeze_backbone:  # before DDP wraps the network: DDP must not wait for the trunk's gradients
        net.backbone.requires_grad_(False)
    return net


def init_weights(net: nn.Module, cfg: SupervisedConfig, tracking_uri: str | None = None) -> str | None:
    """``model.init`` into the trunk (and with ``model.init_head`` the projection); returns the detected kind.
    ``tracking_uri``: the MLflow store an ``mlflow:<run id>`` source is read from (the run's own store)."""
    from hierclr.models.loading import load_backbone

    if not cfg.model.init:
        return None
    head = None
    if cfg.model.init_head:
        head = net.head.projection if cfg.task == "hcal" else net.head
    return load_backbone(net.backbone, cfg.model.init, head=head, tracking_uri=tracking_uri)


def param_groups(net: nn.Module, cfg: SupervisedConfig) -> list[dict]:
    """SGD groups, each with its peak lr in ``peak_lr`` (the schedule scales it): trunk ``optim.lr``; heads
    ``optim.lr * head_lr_scale``; HCAL prototypes of level l ``prototype_lr * prototype_lr_factor**l``
    (spec: 0.05, doubling per level) without weight decay (they are normalised before use, so decay would
    only shrink their norm and raise their effective lr)."""
    o = cfg.optim
    groups = []
    if not cfg.model.freeze_backbone:
        groups.append({"params": list(net.backbone.parameters()), "peak_lr": o.lr, "name": "backbone"})
    if cfg.task == "hcal":
        head = net.head
        groups.append({"params": head.projection_parameters(), "peak_lr": o.lr * o.head_lr_scale, "name": "projection"})
        for level in range(head.num_levels):
            lr = cfg.hcal.prototype_lr * cfg.hcal.prototype_lr_factor ** level
            groups.append({"params": [head.prototype_parameters(level)], "peak_lr": lr, "weight_decay": 0.0,
                           "name": f"prototypes{level}"})
    else:
        groups.append({"params": net.head_parameters(), "peak_lr": o.lr * o.head_lr_scale, "name": "heads"})
    for g in groups:
        g["lr"] = g["peak_lr"]
    return groups


def lr_factor(cfg: SupervisedConfig, epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs`` ((e + 1) / w), then cosine to 0 over the remaining epochs
    (``constant``: 1 after warm-up; ``step``: ``step_gamma`` per milestone reached)."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return (epoch + 1) / o.warmup_epochs
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "step":  # x step_gamma at every milestone reached (linear protocol: 60, 80)
        return o.step_gamma ** sum(epoch >= m for m in o.milestones)
    span = max(o.epochs - o.warmup_epochs, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - o.warmup_epochs) / span))


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


def evaluate(model, cfg: SupervisedConfig, batches, level_map: torch.Tensor, parents, device) -> dict[str, float]:
    """Predict this worker's val rows; rank 0 scores all workers' rows (every rank gets the same dict)."""
    core = model.module if hasattr(model, "module") else model
    was = core.training
    core.eval()
    preds, trues, top5 = [], [], []
    for x, _ids, labels in batches:
        keep = labels >= 0
        out = predict(core, cfg, x[keep].to(device), level_map, parents)
        preds.append(out["levels"].cpu())
        trues.append(level_map[labels[keep].to(device)].cpu())
        if "top5" in out:
            top5.append((out["top5"].cpu() == labels[keep][:, None]).any(1))
    core.train(was)
    L = level_map.shape[1]
    local = (torch.cat(preds).numpy() if preds else np.zeros((0, L), np.int64),
             torch.cat(trues).numpy() if trues else np.zeros((0, L), np.int64),
             torch.cat(top5).numpy() if top5 else np.zeros(0, bool))
    parts = gather_objects(local)
    pred = np.concatenate([p[0] for p in parts])
    true = np.concatenate([p[1] for p in parts])
    hit5 = np.concatenate([p[2] for p in parts])
    if len(pred) == 0:
        return {}
    scores = hierarchy_metrics(pred, true, parent_tables(level_map.cpu().numpy()))
    out = {f"val/{k}" if not k.startswith("acc/") else k: float(v) for k, v in scores.items()}
    out["acc/top1"] = out.get("acc/level0", float((pred[:, 0] == true[:, 0]).mean()))
    if len(hit5):
        out["acc/top5"] = float(hit5.mean())
    if cfg.task != "hcal":  # finetune's levels are the fine prediction's ancestors: never a violation
        out = {k: v for k, v in out.items() if "hvr" not in k}
    out["val/samples"] = float(len(pred))
    return out


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of every Ray Train worker for ``hierclr finetune`` / ``hierclr hcal``."""
    import ray.train
    import ray.train.torch

    cfg = SupervisedConfig.model_validate(loop_config["config"])
    run = SupervisedRunContext(**loop_config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if (cfg.optim.amp and cuda) else None
    transforms = cfg.data.transform_config()
    level_map_np = np.asarray(run.level_map, np.int64)
    level_map = torch.as_tensor(level_map_np, device=device)
    parents = [torch.as_tensor(p, device=device) for p in parent_tables(level_map_np)]

    torch.manual_seed(cfg.seed)
    core = build_network(cfg, level_map_np)
    state = restore_state(run)
    start_epoch, history, best = 0, [], None
    if state is not None:
        core.load_state_dict(state.model)
        start_epoch, history, best = state.next_epoch, list(state.history), state.best
        if state.rng is not None:
            set_rng_state(state.rng)
    else:
        init_weights(core, cfg, run.tracking_uri)
    if cfg.optim.channels_last and cuda:
        core = core.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"find_unused_parameters": False})
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.SGD(param_groups(core, cfg), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)

    tracker = None
    if rank == 0 and run.mlflow_run_id and run.tracking_uri:
        from hierclr.runtime.tracking import Tracker

        tracker = Tracker.attach(cfg.tracking.model_copy(update={"uri": run.tracking_uri}), run.mlflow_run_id)
    clock = ray.get_actor(run.clock_name)
    train_it = ray.train.get_dataset_shard("train")
    val_it = ray.train.get_dataset_shard("val")
    per_worker = cfg.optim.batch_size // world
    num_views = MultiViewAugment(transforms.train).num_views
    ev = transforms.eval

    init_scores: dict[str, float] = {}
    if state is None and cfg.task == "hcal" and cfg.hcal.init_prototypes != "random":
        t0 = time.perf_counter()
        means = class_means(model, eval_batches(ray.train.get_dataset_shard("embed"), ev.mean, ev.std, per_worker),
                            level_map_np.shape[0], device)
        if cfg.hcal.init_prototypes == "centered_class_means":
            seen = ~means.isnan().any(1)
            means[seen] -= means[seen].mean(0)
        core.head.init_prototypes(means.to(device), level_map_np)
        # before any step: the initial network read out by its class means (a nearest-class-mean classifier)
        init_scores = {f"init/{k}": v for k, v in evaluate(
            model, cfg, eval_batches(val_it, ev.mean, ev.std, per_worker), level_map, parents, device).items()}
        with torch.no_grad():
            p0 = torch.nn.functional.normalize(core.head.prototype_parameters(0).detach(), dim=1)
            cos = p0 @ p0.T
            off = ~torch.eye(len(p0), dtype=torch.bool, device=cos.device)
            init_scores["init/prototype_cos_mean"] = float(cos[off].mean())
        if rank == 0:
            print(f"hierclr | HCAL prototypes from the class means of {cfg.model.init} "
                  f"({int((~means.isnan().any(1)).sum())} classes, {time.perf_counter() - t0:.1f}s): before training "
                  f"level-0 accuracy {init_scores.get('init/acc/level0', float('nan')):.4f}, mean cosine between "
                  f"level-0 prototypes {init_scores['init/prototype_cos_mean']:.3f}", flush=True)

    select = cfg.select_metric
    last = cfg.optim.epochs - 1 if run.stop_after_epoch is None else min(cfg.optim.epochs - 1, run.stop_after_epoch)
    for epoch in range(start_epoch, last + 1):
        t_epoch = time.perf_counter()
        factor = lr_factor(cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = g["peak_lr"] * factor
        row: dict[str, float] = {"epoch": float(epoch), "lr": cfg.optim.lr * factor, **init_scores}
        init_scores = {}
        if rank == 0:
            ray.get(clock.set.remote(epoch))
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        gen = step_generator(cfg.seed, epoch, rank, device)
        avg = MetricAverager()
        model.train()
        if cfg.model.freeze_backbone:
            core.backbone.eval()  # linear protocol: the frozen trunk's BatchNorm keeps its statistics
        t0 = time.perf_counter()
        steps = 0
        for batch in train_it.iter_torch_batches(batch_size=per_worker, drop_last=True, device="cpu"):
            views = finish_views(batch, transforms, augment_on=cfg.data.augment_on, device=device, seed=cfg.seed,
                                 epoch=epoch, num_views=num_views)
            x = torch.cat(views)
            labels = batch["labels"].to(device).long().reshape(len(batch["id"]), -1).repeat(len(views), 1)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if cfg.task == "hcal":
                    loss, metrics = hcal_step_loss(model, cfg, x, labels, generator=gen)
                else:
                    loss, metrics = finetune_loss(model, cfg, x, labels[:, 0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            avg.add(metrics)
            steps += 1
        train_s = time.perf_counter() - t0
        row.update(avg.mean())
        row["time/train"] = train_s
        row["train/steps"] = float(steps)
        row["train/images_per_s"] = steps * cfg.optim.batch_size / max(train_s, 1e-9)

        if (cfg.eval.every and (epoch + 1) % cfg.eval.every == 0) or epoch == last:
            t1 = time.perf_counter()
            row.update(evaluate(model, cfg, eval_batches(val_it, ev.mean, ev.std, per_worker), level_map, parents,
                                device))
            row["time/eval"] = time.perf_counter() - t1
        row["time/epoch"] = time.perf_counter() - t_epoch

        score = row.get(select)
        if rank == 0 and score is not None and (best is None or score > best["value"]):
            best = {"epoch": epoch, "metric": select, "value": score}
            _save_best(run.run_dir, core, best)
        history.append(row)
        want_ckpt = (epoch + 1) % cfg.checkpoint.every == 0 or epoch == last
        report = {k: float(v) for k, v in row.items()}
        state_fn = functools.partial(TrainingState, epoch=epoch, optimizer=optimizer.state_dict(), history=history,
                                     best=best, mlflow_run_id=run.mlflow_run_id, config=cfg.to_yaml())
        report_epoch(report, epoch, core, state_fn if (want_ckpt and rank == 0) else None)
        if tracker is not None:
            tracker.log_metrics(epoch, report)
            log_curves(tracker, history)
        if rank == 0:
            print(epoch_line(row, cfg), flush=True)
        if epoch < last and stopped_by_sweep(run, epoch, rank):
            if not want_ckpt:  # end like a finished run: this epoch's state is the last checkpoint
                report_epoch(report, epoch, core, state_fn if rank == 0 else None)
            break


def _save_best(run_dir: str, core: nn.Module, best: dict) -> None:
    buf = io.BytesIO()
    torch.save({**best, "model": {k: v.cpu() for k, v in core.state_dict().items()}}, buf)
    resolve(run_dir).join("best_model.pt").write_bytes_atomic(buf.getvalue())


def epoch_line(row: dict[str, float], cfg: SupervisedConfig) -> str:
    parts = [f"epoch {int(row['epoch'])}/{cfg.optim.epochs - 1}", f"loss {row.get('loss/total', float('nan')):.4f}",
             f"lr {row['lr']:.4g}", f"{row['train/images_per_s']:.0f} img/s"]
    accs = [f"{k.split('/')[1]} {row[k]:.4f}" for k in sorted(row) if k.startswith("acc/")]
    if accs:
        parts.append("val " + " ".join(accs))
    if "val/hvr" in row:
        parts.append(f"HVR {row['val/hvr']:.4f}")
    return "hierclr | " + " | ".join(parts)
