"""The driver of ``hierclr finetune`` and ``hierclr hcal``: resolve data, open the MLflow run, run Ray Train.

Same run directories, resume rules, MLflow layout and sweep hooks as pretraining (:mod:`hierclr.runtime.runs`);
the workers run :func:`hierclr.runtime.worker_supervised.train_loop_per_worker`.
"""
from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import numpy as np

from hierclr.config.loader import flatten
from hierclr.config.supervised import SupervisedConfig
from hierclr.io.checkpoint import load_checkpoint
from hierclr.io.fs import resolve
from hierclr.runtime.runs import (
    TrackingLink,
    check_resources,
    check_resume_config,
    data_path,
    quiet_ray_data,
    resolve_run,
    start_ray,
    storage_root,
    tune_callbacks,
)
from hierclr.runtime.worker_supervised import SupervisedRunContext, build_network, train_loop_per_worker


@dataclass
class SupervisedResult:
    run_dir: str
    checkpoint: str | None
    history: list[dict]
    best: dict | None
    mlflow_run_id: str | None


def supervised_needs(cfg: SupervisedConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one run holds: the Train workers and the data streams' budget."""
    res = cfg.resources
    return (res.num_workers * res.cpus_per_worker + cfg.data.num_cpus,
            res.num_workers * res.gpus_per_worker if res.use_gpu else 0.0)


def _label_space(train_src, val_src, cfg: SupervisedConfig) -> np.ndarray:
    if not train_src.classes:
        raise ValueError(f"data.train ({cfg.data.train}) has no class labels: `hierclr {cfg.task}` needs a labelled "
                         "dataset (ImageFolder classes, parquet with labels)")
    if val_src.classes and val_src.classes != train_src.classes:
        raise ValueError(f"data.val ({cfg.data.val}) has classes {list(val_src.classes)[:5]}..., different from "
                         f"data.train's {list(train_src.classes)[:5]}...: accuracy needs one label space")
    level_map = train_src.level_map()
    if cfg.task == "hcal" and level_map.shape[1] < 2:
        raise ValueError(f"`hierclr hcal` needs a label hierarchy with at least 2 levels; data.train "
                         f"({cfg.data.train}) has none: give data.hierarchy (JSON or edge list) or prepare the "
                         "data with one")
    return level_map


def run_supervised(cfg: SupervisedConfig, *, resume: str | None = None, stop_after_epoch: int | None = None,
                   echo=print, link: TrackingLink | None = None) -> SupervisedResult:
    """Run (or resume) one finetune / HCAL run; returns where it went and its per-epoch history."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hierclr.data import embed_stream, open_source, train_data_config, train_stream
    from hierclr.data.streams import StreamConfig, start_epoch_clock
    from hierclr.runtime.tracking import Tracker, resolved_uri

    start_ray(cfg)
    root = storage_root(cfg)
    run_name, resume_ckpt, resume_state = resolve_run(cfg, root, resume)
    if resume_ckpt:
        check_resume_config(cfg, resume_ckpt, ("task", "model", "loss", "hcal"))
    run_dir = f"{root}/{run_name}"
    start_epoch = int(resume_state["epoch"]) + 1 if resume_state else 0

    quiet_ray_data()
    train_src = open_source(data_path(cfg.data.train, cfg), format=cfg.data.format, hierarchy=cfg.data.hierarchy)
    val_src = open_source(data_path(cfg.data.val, cfg), format=cfg.data.format, hierarchy=cfg.data.hierarchy)
    level_map = _label_space(train_src, val_src, cfg)
    keep_ids = _subset_ids(cfg, train_src) if cfg.subset.active else None
    num_train = train_src.num_rows if keep_ids is None else len(keep_ids)
    if num_train < cfg.optim.batch_size:
        raise ValueError(f"data.train has {num_train} images{' in the subset' if keep_ids is not None else ''}, "
                         f"fewer than one global batch (optim.batch_size={cfg.optim.batch_size})")
    if cfg.model.init:
        _check_init(cfg, level_map)
    scfg = StreamConfig(transforms=cfg.data.transform_config(), batch_size=cfg.data.decode_batch_size,
                        num_cpus=cfg.data.num_cpus, augment_on=cfg.data.augment_on, seed=cfg.seed,
                        max_bad_fraction=cfg.data.max_bad_fraction)
    streams = {"train": train_stream(train_src, scfg, keep_ids=keep_ids), "val": embed_stream(val_src, scfg)}
    if cfg.task == "hcal" and cfg.hcal.init_prototypes != "random" and start_epoch == 0:
        streams["embed"] = embed_stream(train_src, scfg)
    check_resources(cfg, *supervised_needs(cfg), "resources.num_workers x cpus_per_worker/gpus_per_worker + "
                                                 "data.num_cpus")

    clock_name = f"hierclr-clock-{uuid.uuid4().hex[:8]}"
    clock = start_epoch_clock(clock_name, start_epoch)
    streams["train"].use_epoch_clock(clock_name)
    streams["train"].dataset.context._execution_idx = start_epoch
    tracking = cfg.tracking.model_copy(update={"uri": resolved_uri(cfg.tracking)})
    link = link or TrackingLink()
    tags = {"hierclr.run_dir": run_dir, "hierclr.method": cfg.method, "hierclr.task": cfg.task,
            "hierclr.train": cfg.data.train, **link.tags}
    if cfg.model.init:
        tags["hierclr.init"] = cfg.model.init
    if link.parent_run_id:
        tags["mlflow.parentRunId"] = link.parent_run_id
    tracker = Tracker.start(tracking, run_name=link.run_name or run_name, params=flatten(cfg), tags=tags,
                            run_id=(resume_state or {}).get("mlflow_run_id"), run_key=link.run_key)
    levels = "-".join(str(int(level_map[:, lv].max()) + 1) for lv in range(level_map.shape[1]))
    echo(f"hierclr {cfg.task}: run {run_name} ({cfg.method}, {cfg.resources.num_workers} worker(s), "
         f"{num_train} images{' (label subset)' if keep_ids is not None else ''}, classes per level {levels}, epochs {start_epoch}..{cfg.optim.epochs - 1}); "
         f"storage {run_dir}; MLflow {'run ' + tracker.run_id + ' at ' + tracking.uri if tracker.enabled else 'off'}")

    run = SupervisedRunContext(run_dir=run_dir, clock_name=clock_name, level_map=level_map.tolist(),
                               tracking_uri=tracking.uri, mlflow_run_id=tracker.run_id, resume_from=resume_ckpt,
                               stop_after_epoch=stop_after_epoch, stop_board=link.stop_board, stop_key=link.stop_key)
    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "run": run.__dict__},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        datasets={name: s.dataset for name, s in streams.items()},
        dataset_config=train_data_config(("embed", "val")),
        run_config=RunConfig(name=run_name, storage_path=root,
                             failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                             callbacks=tune_callbacks()),
    )
    status = "FAILED"
    try:
        result = trainer.fit()
        status = "FINISHED"
    finally:
        if status == "FAILED":
            tracker.finish("FAILED")
        ray.kill(clock)
    ckpt_path = result.checkpoint.path if result.checkpoint is not None else None
    history, best = [], None
    if ckpt_path is not None:
        with result.checkpoint.as_directory() as d:
            state = load_checkpoint(d)
            history, best = state.history, state.best
            _log_final_artifacts(tracker, cfg, state, run_dir, level_map)
    mlflow_run_id = tracker.run_id
    tracker.finish("FINISHED")
    return SupervisedResult(run_dir=run_dir, checkpoint=ckpt_path, history=history, best=best,
                            mlflow_run_id=mlflow_run_id)


def _subset_ids(cfg: SupervisedConfig, train_src) -> np.ndarray:
    """The dataset ids of ``subset``: from ``ids_file``, or a seeded per-class fraction of the labels (read once)."""
    from hierclr.eval.subsets import per_class_subset

    sub = cfg.subset
    if sub.ids_file is not None:
        loc = resolve(sub.ids_file)
        if not loc.exists():
            raise FileNotFoundError(f"subset.ids_file: {sub.ids_file} does not exist")
        ids = np.load(io.BytesIO(loc.read_bytes()))
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) == 0:
            raise ValueError(f"subset.ids_file {sub.ids_file}: expected a non-empty 1-D integer array of dataset ids")
        return np.unique(ids.astype(np.int64))
    rows = train_src.read().select_columns(["id", "label"]).take_all()
    ids = np.array([r["id"] for r in rows], np.int64)
    labels = np.array([r["label"] for r in rows], np.int64)
    return per_class_subset(ids, labels, sub.fraction, seed=sub.seed)


def _check_init(cfg: SupervisedConfig, level_map: np.ndarray) -> None:
    """Load ``model.init`` once on the driver, so a wrong file fails before any worker starts."""
    from hierclr.runtime.tracking import resolved_uri
    from hierclr.runtime.worker_supervised import init_weights

    init_weights(build_network(cfg, level_map), cfg, resolved_uri(cfg.tracking))


def _log_final_artifacts(tracker, cfg: SupervisedConfig, state, run_dir: str, level_map: np.ndarray) -> None:
    """Resolved config, history, learning curves, and the last / best networks as MLflow PyTorch models:
    ``encoder_*`` the trunk (avgpool features, what kNN / linear evaluation read), ``classifier_*`` images ->
    logits (finetune) or level-0 features (HCAL)."""
    import torch

    from hierclr.runtime.artifacts import log_curves

    if not tracker.enabled:
        return
    tracker.log_text(cfg.to_yaml(), "config/resolved.yaml")
    log_curves(tracker, state.history)
    tracker.log_dict({"history": state.history, "best": state.best}, "history.json")
    if not cfg.tracking.log_models:
        return
    size = cfg.data.transform_config().eval.crop
    example = torch.zeros(2, 3, size, size)
    net = build_network(cfg, level_map)
    net.load_state_dict(state.model)
    tracker.log_encoder("encoder_last", net.backbone, example, step=state.epoch)
    best_file = resolve(run_dir).join("best_model.pt")
    if best_file.exists():
        best = torch.load(io.BytesIO(best_file.read_bytes()), map_location="cpu", weights_only=True)
        net.load_state_dict(best["model"])
        tracker.log_encoder("encoder_best", net.backbone, example, step=int(best["epoch"]))
