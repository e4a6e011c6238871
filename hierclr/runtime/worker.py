"""The per-worker loop that Ray Train runs: one epoch = E-step (embed -> cluster) then M-step (train).

Every worker runs :func:`train_loop_per_worker` (DDP over NCCL on GPUs, gloo on CPU). Per epoch:

1. E-step (HCSC / PCL, after warm-up): the momentum encoder embeds this worker's share of the ``embed``
   stream; the (ids, features) shard goes to the clustering service as an object ref; every worker
   receives the same :class:`Prototypes` for the epoch.
2. M-step: the ``train`` stream's views through :func:`hcsc_train_step` (MoCo queue shared across
   workers through the all-gathered enqueue), lr on a per-epoch cosine schedule. With labels, the ICSC
   masks are counted against them on the device and summed over the ranks once (paper Fig. 5).
3. Every ``eval.every`` epochs: weighted kNN (backbone features) on the labelled ``val`` split, the
   train split's features staying sharded on the workers (per-shard top-k, merged on rank 0).
4. ``ray.train.report`` with the epoch's metrics (and a checkpoint every ``checkpoint.every`` epochs);
   rank 0 logs the metrics to MLflow.

Randomness is a function of (seed, epoch, rank), so a run resumed from the checkpoint of epoch e
continues at e + 1 exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import functools
import logging
import math
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from hierclr.config.pretrain import PretrainConfig
from hierclr.data.streams import finish_views
from hierclr.data.transforms import MultiViewAugment
from hierclr.eval.knn import knn_accuracy_from_topk, knn_topk, merge_topk
from hierclr.eval.selection_quality import SelectionCounter, selection_metrics
from hierclr.io.checkpoint import TrainingState, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hierclr.io.fs import resolve
from hierclr.losses import HCSCObjective, PCLObjective
from hierclr.methods.contrastive_step import embed_pass, hcsc_train_step
from hierclr.models import MoCo
from hierclr.runtime.artifacts import log_curves, log_hierarchy
from hierclr.runtime.faults import trigger
from hierclr.runtime.metrics import MetricAverager, sum_over_ranks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What the driver resolved for the workers (plain values: it travels in ``train_loop_config``)."""

    run_dir: str
    service_name: str | None
    clock_name: str
    num_classes: int
    has_val: bool
    tracking_uri: str | None
    mlflow_run_id: str | None
    resume_from: str | None = None
    stop_after_epoch: int | None = None
    level_map: list | None = None  # (C, L): class c's label at every hierarchy level; None: unlabelled data
    stop_board: str | None = None  # sweep trials: the early-stopping board (hierclr.runtime.early_stop)
    stop_key: str | None = None  # ... and this trial's id on it


def epoch_lr(cfg: PretrainConfig, epoch: int) -> float:
    """Per-epoch schedule (spec): ``lr * 0.5 * (1 + cos(pi * epoch / epochs))``, lr linearly scaled by batch."""
    if cfg.optim.schedule == "constant":
        return cfg.optim.lr
    return cfg.optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.optim.epochs))


def build_objective(cfg: PretrainConfig):
    """HCSC with its Table 5 switches; MoCo v2 = no prototypes ever; PCL v2 = InfoNCE + ProtoNCE."""
    if cfg.method == "pcl":
        return PCLObjective(temperature=cfg.loss.temperature, num_negatives=cfg.pcl.num_negatives)
    return HCSCObjective(cfg.loss)


def uses_prototypes(cfg: PretrainConfig, epoch: int) -> bool:
    return cfg.uses_clustering and epoch >= cfg.loss.warmup_epochs


def selection_counter(cfg: PretrainConfig, protos, fine_by_id: torch.Tensor | None) -> SelectionCounter | None:
    """A counter of this epoch's ICSC masks against the labels (paper Fig. 5), or None where the epoch draws no
    ICSC mask (warm-up, MoCo / PCL, instance loss or selection off) or the training split has no labels."""
    loss = cfg.loss
    if not (cfg.eval.selection_quality and cfg.method == "hcsc" and protos is not None and fine_by_id is not None
            and loss.instance_loss and loss.instance_selection):
        return None
    return SelectionCounter(fine_by_id, protos.num_levels if loss.hierarchical_prototypes else 1)


def build_model(cfg: PretrainConfig) -> MoCo:
    m = cfg.model
    return MoCo(m.backbone, dim=m.dim, hidden_dim=m.hidden_dim, queue_size=m.queue_size, momentum=m.momentum,
                cifar_stem=m.cifar_stem)


def step_generator(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The Bernoulli-mask generator of one (epoch, rank): a pure function of them, so resumes are exact."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([seed, epoch, rank, 7]).integers(0, 2**62)))
    return g


def _save_best_encoder(run_dir: str, model: MoCo, epoch: int, score: float) -> None:
    import io

    buf = io.BytesIO()
    torch.save({"epoch": epoch, "knn_top1": score, "encoder_q": {k: v.cpu() for k, v in
                                                                 model.encoder_q.state_dict().items()}}, buf)
    resolve(run_dir).join("best_encoder.pt").write_bytes_atomic(buf.getvalue())


def gather_objects(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def distributed_knn(train: dict, val: dict, *, ks, num_classes: int, temperature: float) -> dict[str, float]:
    """kNN top-1 with the train features sharded over the ranks: val features are all-gathered, each rank
    takes the top-k of every val row within its shard, rank 0 merges the shards' lists and votes.
    Returns the accuracies on every rank (rank 0's are the ones reported)."""
    keep = val["labels"] >= 0
    vals = gather_objects((val["backbone"][keep].half(), val["labels"][keep]))
    val_f = torch.cat([v[0] for v in vals]).float()
    val_y = torch.cat([v[1] for v in vals])
    tkeep = train["labels"] >= 0
    kmax = max(ks)
    part = knn_topk(train["backbone"][tkeep], train["labels"][tkeep], val_f, kmax) if tkeep.any() else None
    parts = [p for p in gather_objects(part) if p is not None]
    if not parts or len(val_y) == 0:
        return {}
    sims, labels = merge_topk(parts, kmax)
    acc = knn_accuracy_from_topk(sims, labels, val_y, ks=ks, num_classes=num_classes, temperature=temperature)
    return {f"knn/{k}": float(v) for k, v in acc.items()}


def gather_labels(ids: torch.Tensor, labels: torch.Tensor, num_rows: int, level_map: np.ndarray) -> np.ndarray:
    """``(num_rows, L)`` labels of every dataset id at every hierarchy level (-1: unlabelled or not embedded),
    assembled from all ranks' embed shards (a collective: every rank calls it; every rank gets the table)."""
    table = np.full((num_rows, level_map.shape[1]), -1, np.int64)
    for part_ids, part_labels in gather_objects((ids.cpu().numpy(), labels.cpu().numpy())):
        known = part_labels >= 0
        table[part_ids[known]] = level_map[part_labels[known]]
    return table


def eval_batches(iterator, eval_mean, eval_std, batch_size: int):
    mean = torch.tensor(eval_mean).view(1, 3, 1, 1)
    std = torch.tensor(eval_std).view(1, 3, 1, 1)
    for batch in iterator.iter_torch_batches(batch_size=batch_size, device="cpu"):
        x = (batch["image"].float() / 255.0 - mean) / std
        yield x, batch["id"], batch["label"]


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of every Ray Train worker (``TorchTrainer(train_loop_per_worker, train_loop_config=...)``)."""
    import ray.train
    import ray.train.torch

    cfg = PretrainConfig.model_validate(loop_config["config"])
    run = RunContext(**loop_config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if (cfg.optim.amp and cuda) else None
    channels_last = cfg.optim.channels_last and cuda
    transforms = cfg.data.transform_config()

    # ---- model, optimizer, state
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    core = build_model(cfg)
    state = restore_state(run)
    start_epoch, history, best, protos = 0, [], None, None
    if state is not None:
        core.load_state_dict(state.model)
        start_epoch, history, best, protos = state.next_epoch, list(state.history), state.best, state.prototypes
        if state.rng is not None:
            set_rng_state(state.rng)
    if channels_last:
        core = core.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"broadcast_buffers": False})
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.SGD(core.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
    objective = build_objective(cfg)

    tracker = None
    if rank == 0 and run.mlflow_run_id and run.tracking_uri:
        from hierclr.runtime.tracking import Tracker

        tracker = Tracker.attach(cfg.tracking.model_copy(update={"uri": run.tracking_uri}), run.mlflow_run_id)
    service = None
    if cfg.uses_clustering:
        from hierclr.service import connect

        service = connect(run.service_name)
    clock = ray.get_actor(run.clock_name)

    train_it = ray.train.get_dataset_shard("train")
    embed_it = ray.train.get_dataset_shard("embed")
    val_it = ray.train.get_dataset_shard("val") if run.has_val else None
    per_worker = cfg.optim.batch_size // world
    num_views = MultiViewAugment(transforms.train).num_views
    ev = transforms.eval

    level_map = np.asarray(run.level_map, np.int64) if run.level_map else None
    labels_by_id = None  # (N, L) labels of every id, filled at the first E-step when AMI or selection is measured
    fine_by_id = None  # its level-0 column on the device, for the selection counts
    last = cfg.optim.epochs - 1
    if run.stop_after_epoch is not None:
        last = min(last, run.stop_after_epoch)
    for epoch in range(start_epoch, last + 1):
        t_epoch = time.perf_counter()
        row: dict[str, float] = {"epoch": float(epoch)}
        lr = epoch_lr(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        row["lr"] = lr

        # ---- E-step
        protos, check_ids = None, False
        eval_now = run.has_val and cfg.eval.every > 0 and ((epoch + 1) % cfg.eval.every == 0 or epoch == last)
        need_e = uses_prototypes(cfg, epoch)
        embedded = None
        t0 = time.perf_counter()
        if need_e:
            embedded = embed_pass(model, eval_batches(embed_it, ev.mean, ev.std, per_worker), head=need_e,
                                  backbone=False, device=device, channels_last=channels_last, amp_dtype=amp_dtype)
        row["time/embed"] = time.perf_counter() - t0
        row["time/cluster"] = row["time/broadcast"] = 0.0
        if need_e:
            t1 = time.perf_counter()
            protos, stats = service.estep(epoch, rank, world, embedded["ids"], embedded["head"], device=device)
            waited = time.perf_counter() - t1
            row["time/cluster"] = stats.cluster_s
            row["time/broadcast"] = max(waited - stats.total_s, 0.0)  # incl. waiting for the slowest rank
            row.update(stats.as_metrics(prefix="cluster/"))
            protos = protos.to(device)
            check_ids = stats.num_missing > 0  # ids skipped by the embed stream must not reach the loss
            if (cfg.eval.ami or cfg.eval.selection_quality) and level_map is not None and labels_by_id is None:
                labels_by_id = gather_labels(embedded["ids"], embedded["labels"], len(protos.assignments), level_map)
                fine_by_id = torch.as_tensor(labels_by_id[:, 0], device=device)
            if cfg.eval.ami and level_map is not None and rank == 0:  # paper Table 11, per epoch
                from hierclr.eval.hierarchy_ami import prototype_label_ami

                row.update(prototype_label_ami(protos.assignments.cpu().numpy(), labels_by_id,
                                               max_samples=cfg.eval.ami_max_samples, seed=cfg.seed))
            every = cfg.tracking.hierarchy_every
            if tracker is not None and every and (epoch - cfg.loss.warmup_epochs) % every == 0:
                log_hierarchy(tracker, protos, f"hierarchy/epoch_{epoch:03d}")

        # ---- M-step
        if rank == 0:
            ray.get(clock.set.remote(epoch))  # the stream's tasks seed this epoch's augmentations with it
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        gen = step_generator(cfg.seed, epoch, rank, device)
        avg = MetricAverager()
        selection = selection_counter(cfg, protos, fine_by_id)
        model.train()
        t2 = time.perf_counter()
        steps = 0
        for batch in train_it.iter_torch_batches(batch_size=per_worker, drop_last=True, device="cpu"):
            views = finish_views(batch, transforms, augment_on=cfg.data.augment_on, device=device, seed=cfg.seed,
                                 epoch=epoch, num_views=num_views)
            if channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            ids = batch["id"].to(device)
            if check_ids and bool((protos.assignments[ids, 0] < 0).any()):
                bad = ids[protos.assignments[ids, 0] < 0].tolist()
                raise RuntimeError(f"image ids {bad[:5]} were skipped by the E-step's embed stream (undecodable "
                                   "there) but decoded in training: they have no prototype assignment")
            metrics = hcsc_train_step(model, objective, optimizer, views[0], views[1], ids, protos,
                                      local_views=views[2:], generator=gen, amp_dtype=amp_dtype,
                                      selection=selection)
            avg.add(metrics)
            steps += 1
            trigger("train_step", epoch=epoch, rank=rank, step=steps)  # tests' fault plan
        train_seconds = time.perf_counter() - t2
        row.update(avg.mean())
        if selection is not None:
            row.update(selection_metrics(sum_over_ranks(selection.counts)))
        row["time/train"] = train_seconds
        row["train/steps"] = float(steps)
        row["train/images_per_s"] = steps * cfg.optim.batch_size / max(train_seconds, 1e-9)

        # ---- kNN monitoring
        if eval_now:
            t3 = time.perf_counter()
            train_feats = embed_pass(model, eval_batches(embed_it, ev.mean, ev.std, per_worker), head=False,
                                     backbone=True, device=device, channels_last=channels_last, amp_dtype=amp_dtype)
            val_feats = embed_pass(model, eval_batches(val_it, ev.mean, ev.std, per_worker), head=False,
                                   backbone=True, device=device, channels_last=channels_last, amp_dtype=amp_dtype)
            knn = distributed_knn(train_feats, val_feats, ks=cfg.eval.ks, num_classes=run.num_classes,
                                  temperature=cfg.eval.temperature)
            row.update(knn)
            row["time/eval"] = time.perf_counter() - t3
        row["time/epoch"] = time.perf_counter() - t_epoch

        # ---- best encoder, checkpoint, report, MLflow
        score = row.get("knn/top1_best")
        if rank == 0 and score is not None and (best is None or score > best["knn_top1"]):
            best = {"epoch": epoch, "knn_top1": score}
            _save_best_encoder(run.run_dir, core, epoch, score)
        history.append(row)
        want_ckpt = (epoch + 1) % cfg.checkpoint.every == 0 or epoch == last
        report = {k: float(v) for k, v in row.items()}

        state = functools.partial(TrainingState, epoch=epoch, optimizer=optimizer.state_dict(), history=history,
                                  best=best, mlflow_run_id=run.mlflow_run_id, config=cfg.to_yaml())
        report_epoch(report, epoch, core, state if (want_ckpt and rank == 0) else None, protos)
        if tracker is not None:
            tracker.log_metrics(epoch, report)
            log_curves(tracker, history)
        if rank == 0:
            print(epoch_line(row, cfg.optim.epochs), flush=True)
        if epoch < last and stopped_by_sweep(run, epoch, rank):
            if not want_ckpt:  # end like a finished run: this epoch's state is the last checkpoint
                report_epoch(report, epoch, core, state if rank == 0 else None, protos)
            break


def stopped_by_sweep(run, epoch: int, rank: int) -> bool:
    """A sweep trial (``run.stop_board`` set): did the scheduler stop it after ``epoch``? Rank 0 asks the board,
    every rank gets its answer (a collective: every rank calls it)."""
    if not run.stop_board:
        return False
    from hierclr.runtime.early_stop import await_decision

    stop = await_decision(run.stop_board, run.stop_key, epoch + 1) if rank == 0 else False
    stop = bool(gather_objects(stop)[0])
    if stop and rank == 0:
        print(f"hierclr | stopped early by the sweep's scheduler after epoch {epoch}", flush=True)
    return stop


def report_epoch(report: dict[str, float], epoch: int, core: torch.nn.Module, state, protos=None) -> None:
    """``ray.train.report`` of one epoch (a barrier: every rank calls it); with ``state`` (rank 0: a partial
    :class:`TrainingState` lacking weights, prototypes and RNG, taken here) also a checkpoint. ``epochs_done`` is the
    clock Tune's schedulers count in."""
    import ray.train

    metrics = {**report, "epochs_done": epoch + 1}
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="hierclr-ckpt-") as tmp:
        save_checkpoint(tmp, state(model={k: v.cpu() for k, v in core.state_dict().items()}, rng=rng_state(),
                                   prototypes=protos.to("cpu") if protos is not None else None))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def epoch_line(row: dict[str, float], epochs: int) -> str:
    """One human-readable progress line per epoch (the full row goes to Ray Train and MLflow)."""
    parts = [f"epoch {int(row['epoch'])}/{epochs - 1}", f"loss {row.get('loss/total', float('nan')):.4f}",
             f"lr {row['lr']:.4g}", f"{row['train/images_per_s']:.0f} img/s"]
    if "knn/top1_best" in row:
        parts.append(f"kNN top-1 {row['knn/top1_best']:.4f} (k={int(row.get('knn/best_k', 0))})")
    t = {k.split("/")[1]: row[k] for k in ("time/embed", "time/cluster", "time/broadcast", "time/train") if k in row}
    parts.append("time " + " ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    return "hierclr | " + " | ".join(parts)


def restore_state(run) -> TrainingState | None:
    """Ray's checkpoint after a worker-group restart (or a driver restore), else ``--resume PATH``
    (``run.resume_from``)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            return load_checkpoint(d)
    if run.resume_from:
        return load_checkpoint(run.resume_from)
    return None
