"""The one per-worker epoch loop that Ray Train runs, for every method (pretraining, finetune, HCAL).

Every worker runs :func:`train_loop_per_worker` (DDP over NCCL on GPUs, gloo on CPU). Per epoch, in order:

1. ``set_lr``, then ``before_epoch``: the method's E-step (HCSC / PCL after warm-up: embed, cluster through the
   clustering service, one :class:`~hierclr.clustering.Prototypes` for every rank);
2. the M-step: the ``train`` stream's augmented views through the method's ``step``; augmentations are seeded
   by (seed, epoch, row id) through the run's epoch clock, the step's random draws by (seed, epoch, rank);
3. ``evaluate`` when due (kNN monitor, or val accuracy / HVR);
4. the best model, then ``ray.train.report`` with the epoch's metrics (and a checkpoint every
   ``checkpoint.every`` epochs); rank 0 logs the metrics to MLflow and prints one progress line;
5. in a sweep trial, the scheduler's early-stop decision.

Randomness is a function of (seed, epoch, rank), so a run resumed from the checkpoint of epoch e continues at
e + 1 exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import functools
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist

from hierclr.data.streams import finish_views, train_batch_kwargs
from hierclr.data.transforms import MultiViewAugment
from hierclr.io.checkpoint import TrainingState, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hierclr.runtime import console
from hierclr.runtime.artifacts import log_curves
from hierclr.runtime.context import RunContext, WorkerEnv
from hierclr.runtime.divergence import CHECK_EVERY, DivergenceGuard
from hierclr.runtime.faults import trigger
from hierclr.runtime.metrics import MetricAverager, gather_objects


def step_generator(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The step's generator for one (epoch, rank) (Bernoulli masks, HCAL's prototype noise): a pure function of
    them, so resumes are exact."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([seed, epoch, rank, 7]).integers(0, 2**62)))
    return g


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of every Ray Train worker (``TorchTrainer(train_loop_per_worker, train_loop_config=...)``);
    ``loop_config``: ``{"plan": <method plan name>, "config": <config as JSON>, "run": <RunContext fields>}``."""
    import ray
    import ray.train
    import ray.train.torch

    from hierclr.methods import plan_class

    plan = plan_class(loop_config["plan"])
    cfg = plan.config_cls.model_validate(loop_config["config"])
    run = RunContext(**loop_config["run"])
    console.quiet_worker(run.verbose)
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    cuda = device.type == "cuda"
    env = WorkerEnv(rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=device,
                    amp_dtype=torch.bfloat16 if (cfg.optim.amp and cuda) else None,
                    channels_last=cfg.optim.channels_last and cuda,
                    per_worker_batch=cfg.optim.batch_size // ctx.get_world_size())
    rank = env.rank
    tracker = None
    if rank == 0 and run.mlflow_run_id and run.tracking_uri:
        from hierclr.runtime.tracking import Tracker

        tracker = Tracker.attach(cfg.tracking.model_copy(update={"uri": run.tracking_uri}), run.mlflow_run_id)
    method = plan.method(cfg, run, env, tracker)

    # ---- model, optimizer, state
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    core = method.build()
    state = restore_state(run)
    start_epoch, history, best = 0, [], None
    if state is not None:
        core.load_state_dict(state.model)
        start_epoch, history, best = state.next_epoch, list(state.history), state.best
        if state.rng is not None:
            set_rng_state(state.rng)
        method.restore(state)
    else:
        method.init_weights(core)
    if env.channels_last:
        core = core.to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        # torch >= 2.13 deprecates DDP's broadcast_buffers, but its replacement (forward_sync_buffers) still syncs
        # buffers at init; torch's own warning says to keep broadcast_buffers=False for rank-local buffers
        # (model.embed_buffers: per_rank) until it has init_sync_buffers. Said once here, not per worker per run.
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs=method.ddp_kwargs)
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.SGD(method.param_groups(core), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)

    clock = ray.get_actor(run.clock_name)
    train_it = ray.train.get_dataset_shard("train")
    transforms = cfg.data.transform_config()
    num_views = MultiViewAugment(transforms.train).num_views
    init_scores = method.before_training(model) if state is None else {}

    last = cfg.optim.epochs - 1
    if run.stop_after_epoch is not None:
        last = min(last, run.stop_after_epoch)
    for epoch in range(start_epoch, last + 1):
        t_epoch = time.perf_counter()
        row: dict[str, float] = {"epoch": float(epoch)}
        row["lr"] = method.set_lr(optimizer, epoch)
        row.update(init_scores)
        init_scores = {}
        method.before_epoch(model, epoch, row)

        # ---- M-step
        if rank == 0:
            ray.get(clock.set.remote(epoch))  # the stream's tasks seed this epoch's augmentations with it
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        gen = step_generator(cfg.seed, epoch, rank, device)
        avg = MetricAverager()
        guard = DivergenceGuard(epoch, row["lr"])  # a non-finite loss / weight ends the run (no sync per step)
        model.train()
        method.train_mode(core)
        t_train = time.perf_counter()
        steps = 0
        shuffle = train_batch_kwargs(cfg.data.shuffle_buffer, cfg.seed, epoch, rank)  # batches mix decode slices
        for batch in train_it.iter_torch_batches(batch_size=env.per_worker_batch, drop_last=True, device="cpu",
                                                 **shuffle):
            views = finish_views(batch, transforms, augment_on=cfg.data.augment_on, device=device, seed=cfg.seed,
                                 epoch=epoch, num_views=num_views)
            if env.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            metrics = method.step(model, optimizer, batch, views, gen, epoch)
            steps += 1
            avg.add(metrics)
            guard.add(steps, metrics)
            trigger("train_step", epoch=epoch, rank=rank, step=steps)  # tests' fault plan (hierclr.runtime.faults)
            if steps % CHECK_EVERY == 0:
                guard.check(steps)
        guard.check(steps, core)  # before anything of this epoch is evaluated, saved or reported
        train_seconds = time.perf_counter() - t_train
        row.update(avg.mean())
        row.update(method.after_train())
        row["time/train"] = train_seconds
        row["train/steps"] = float(steps)
        row["train/images_per_s"] = steps * cfg.optim.batch_size / max(train_seconds, 1e-9)

        if method.eval_due(epoch, last):
            t_eval = time.perf_counter()
            row.update(method.evaluate(model, epoch))
            row["time/eval"] = time.perf_counter() - t_eval
        row["time/epoch"] = time.perf_counter() - t_epoch

        # ---- best model, checkpoint, report, MLflow
        score = row.get(method.select_metric)
        if rank == 0 and score is not None and (best is None or score > method.best_value(best)):
            best = method.best_record(epoch, score)
            method.save_best(core, best)
        history.append(row)
        want_ckpt = (epoch + 1) % cfg.checkpoint.every == 0 or epoch == last
        report = {k: float(v) for k, v in row.items()}
        state_fn = functools.partial(TrainingState, epoch=epoch, optimizer=optimizer.state_dict(), history=history,
                                     best=best, mlflow_run_id=run.mlflow_run_id, config=cfg.to_yaml(),
                                     **method.checkpoint_extras())
        report_epoch(report, epoch, core, state_fn if (want_ckpt and rank == 0) else None)
        if tracker is not None:
            tracker.log_metrics(epoch, report)
            log_curves(tracker, history)
        if rank == 0:
            print(method.epoch_line(row), flush=True)
        if epoch < last and stopped_by_sweep(run, epoch, rank):
            if not want_ckpt:  # end like a finished run: this epoch's state is the last checkpoint
                report_epoch(report, epoch, core, state_fn if rank == 0 else None)
            break


def stopped_by_sweep(run: RunContext, epoch: int, rank: int) -> bool:
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


def report_epoch(report: dict[str, float], epoch: int, core: torch.nn.Module, state) -> None:
    """``ray.train.report`` of one epoch (a barrier: every rank calls it); with ``state`` (rank 0: a partial
    :class:`TrainingState` lacking weights and RNG, taken here) also a checkpoint. ``epochs_done`` is the clock
    Tune's schedulers count in."""
    import ray.train

    metrics = {**report, "epochs_done": epoch + 1}
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="hierclr-ckpt-") as tmp:
        save_checkpoint(tmp, state(model={k: v.cpu() for k, v in core.state_dict().items()}, rng=rng_state()))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore_state(run: RunContext) -> TrainingState | None:
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
