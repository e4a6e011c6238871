"""The pretraining driver: resolve data, start the clustering service and MLflow run, run Ray Train.

``run_pretrain(cfg)`` is what ``hierclr pretrain`` and ``pipelines/pretrain.py`` call. It runs on the
Ray driver (a laptop with a local Ray, or the head node under ``ray job submit``); the training itself
runs in :func:`hierclr.runtime.worker.train_loop_per_worker` on the Ray Train workers.

Run directories and ``resume`` work as :mod:`hierclr.runtime.runs` describes (shared with finetune / hcal).
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hierclr.config.pretrain import PretrainConfig, flatten
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
from hierclr.runtime.worker import RunContext, build_model, train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    run_dir: str
    checkpoint: str | None
    history: list[dict]
    best: dict | None
    mlflow_run_id: str | None
    bad_images: list = field(default_factory=list)


def run_needs(cfg: PretrainConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one run holds while it trains: Train workers, the data streams' budget, clustering actors."""
    res = cfg.resources
    need_cpu = res.num_workers * res.cpus_per_worker + cfg.data.num_cpus
    need_gpu = res.num_workers * res.gpus_per_worker if res.use_gpu else 0.0
    if cfg.uses_clustering:
        s = cfg.service
        need_cpu += s.num_actors * (s.cpus_per_actor if s.gpus_per_actor == 0 else 0)
        need_gpu += s.num_actors * s.gpus_per_actor
    return need_cpu, need_gpu


def run_pretrain(
    cfg: PretrainConfig,
    *,
    resume: str | None = None,
    stop_after_epoch: int | None = None,
    echo=print,
    link: TrackingLink | None = None,
) -> PretrainResult:
    """Run (or resume) one pretraining run; returns where it went and its per-epoch history."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hierclr.data import embed_stream, open_source, train_data_config, train_stream
    from hierclr.data.streams import StreamConfig, start_epoch_clock
    from hierclr.runtime.tracking import Tracker, resolved_uri

    start_ray(cfg)
    root = storage_root(cfg)
    run_name, resume_ckpt, resume_state = resolve_run(cfg, root, resume)
    if resume_ckpt:
        check_resume_config(cfg, resume_ckpt, ("method", "model"))
    run_dir = f"{root}/{run_name}"
    start_epoch = int(resume_state["epoch"]) + 1 if resume_state else 0

    # ---- data
    quiet_ray_data()
    train_src = open_source(data_path(cfg.data.train, cfg), format=cfg.data.format, hierarchy=cfg.data.hierarchy)
    val_src = (open_source(data_path(cfg.data.val, cfg), format=cfg.data.format, hierarchy=cfg.data.hierarchy)
               if cfg.data.val else None)
    if val_src is not None and val_src.classes and train_src.classes and val_src.classes != train_src.classes:
        raise ValueError(f"data.val ({cfg.data.val}) has classes {list(val_src.classes)[:5]}..., different from "
                         f"data.train's {list(train_src.classes)[:5]}...: kNN needs one label space")
    scfg = StreamConfig(transforms=cfg.data.transform_config(), batch_size=cfg.data.decode_batch_size,
                        num_cpus=cfg.data.num_cpus, augment_on=cfg.data.augment_on, seed=cfg.seed,
                        max_bad_fraction=cfg.data.max_bad_fraction)
    streams = {"train": train_stream(train_src, scfg), "embed": embed_stream(train_src, scfg)}
    if val_src is not None:
        streams["val"] = embed_stream(val_src, scfg)
    if cfg.uses_clustering:
        need = cfg.clustering.sizes[0] if cfg.method == "hcsc" else max(cfg.pcl.num_clusters)
        if train_src.num_rows < need:
            raise ValueError(f"data.train has {train_src.num_rows} images, fewer than the {need} prototypes asked "
                             f"for ({'clustering.sizes' if cfg.method == 'hcsc' else 'pcl.num_clusters'})")
    if train_src.num_rows < cfg.optim.batch_size:
        raise ValueError(f"data.train has {train_src.num_rows} images, fewer than one global batch "
                         f"(optim.batch_size={cfg.optim.batch_size})")

    check_resources(cfg, *run_needs(cfg), "resources.num_workers x cpus_per_worker/gpus_per_worker + data.num_cpus + "
                    "service.num_actors x cpus_per_actor/gpus_per_actor")

    # ---- services: epoch clock, clustering actors, MLflow run
    token = uuid.uuid4().hex[:8]
    clock_name = f"hierclr-clock-{token}"
    clock = start_epoch_clock(clock_name, start_epoch)
    streams["train"].use_epoch_clock(clock_name)
    # Unit (read-block) order is reseeded by Ray per execution; continue its count where the run stopped.
    streams["train"].dataset.context._execution_idx = start_epoch
    service = None
    if cfg.uses_clustering:
        from hierclr.service import ClusteringService

        service = ClusteringService.start(
            f"hierclr-clustering-{token}", cfg.clustering, cfg.service, method=cfg.method,
            pcl_sizes=cfg.pcl.num_clusters, num_rows=train_src.num_rows)
    tracking = cfg.tracking.model_copy(update={"uri": resolved_uri(cfg.tracking)})
    mlflow_run_id = (resume_state or {}).get("mlflow_run_id")
    link = link or TrackingLink()
    tags = {"hierclr.run_dir": run_dir, "hierclr.method": cfg.method, "hierclr.train": cfg.data.train, **link.tags}
    if link.parent_run_id:
        tags["mlflow.parentRunId"] = link.parent_run_id  # what the MLflow UI nests runs by
    tracker = Tracker.start(tracking, run_name=link.run_name or run_name, params=flatten(cfg), tags=tags,
                            run_id=mlflow_run_id, run_key=link.run_key)
    echo(f"hierclr pretrain: run {run_name} ({cfg.method}, {cfg.resources.num_workers} worker(s), "
         f"{train_src.num_rows} images, epochs {start_epoch}..{cfg.optim.epochs - 1}); storage {run_dir}; "
         f"MLflow {'run ' + tracker.run_id + ' at ' + tracking.uri if tracker.enabled else 'off'}")

    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "run": RunContext(
            run_dir=run_dir, service_name=service.name if service else None, clock_name=clock_name,
            num_classes=len(train_src.classes), has_val=val_src is not None, tracking_uri=tracking.uri,
            mlflow_run_id=tracker.run_id, resume_from=resume_ckpt,
            stop_after_epoch=stop_after_epoch,
            level_map=train_src.level_map().tolist() if train_src.classes else None,
            stop_board=link.stop_board, stop_key=link.stop_key).__dict__,
    }
    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        datasets={name: s.dataset for name, s in streams.items()},
        dataset_config=train_data_config(("embed", "val")),
        run_config=RunConfig(
            name=run_name, storage_path=root,
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            callbacks=tune_callbacks(),
        ),
    )
    status = "FAILED"
    try:
        result = trainer.fit()
        status = "FINISHED"
    finally:
        if status == "FAILED":
            tracker.finish("FAILED")
        if service is not None:
            service.shutdown()
        ray.kill(clock)
    mlflow_run_id = tracker.run_id
    bad = streams["train"].bad_images() + streams["embed"].bad_images()
    ckpt_path = result.checkpoint.path if result.checkpoint is not None else None
    history, best = [], None
    if ckpt_path is not None:
        with result.checkpoint.as_directory() as d:
            state = load_checkpoint(d)
            history, best = state.history, state.best
            _log_final_artifacts(tracker, cfg, state, run_dir, bad, train_src)
    tracker.finish("FINISHED")
    if bad:
        echo(f"hierclr pretrain: skipped {len(bad)} undecodable image(s), e.g. {bad[0]}")
    return PretrainResult(run_dir=run_dir, checkpoint=ckpt_path, history=history, best=best,
                          mlflow_run_id=mlflow_run_id, bad_images=bad)


def _log_final_artifacts(tracker, cfg: PretrainConfig, state, run_dir: str, bad: list, train_src) -> None:
    """Resolved config, final prototypes, bad-image report, hierarchy views (tree, cluster sizes, chains of
    images), learning curves, and the last and best encoders as MLflow models: the query encoder's ResNet trunk
    (avgpool features), what kNN / linear evaluation and downstream tasks read."""
    import tempfile

    import torch

    from hierclr.runtime.artifacts import log_chains, log_curves, log_hierarchy

    if not tracker.enabled:
        return
    tracker.log_text(cfg.to_yaml(), "config/resolved.yaml")
    log_curves(tracker, state.history)
    if state.prototypes is not None:
        log_hierarchy(tracker, state.prototypes, "hierarchy/final")
        log_chains(tracker, state.prototypes, train_src, num_chains=cfg.tracking.chain_grids, seed=cfg.seed)
    tracker.log_dict({"history": state.history, "best": state.best}, "history.json")
    if bad:
        tracker.log_text("\n".join(json.dumps(b.__dict__ if hasattr(b, "__dict__") else str(b)) for b in bad),
                         "data/bad_images.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        if state.prototypes is not None:
            state.prototypes.save(Path(tmp, "prototypes.pt"))
            tracker.log_artifact(str(Path(tmp, "prototypes.pt")), "prototypes")
    if not cfg.tracking.log_models:
        return
    size = cfg.data.transform_config().eval.crop
    example = torch.zeros(2, 3, size, size)
    model = build_model(cfg)
    model.load_state_dict(state.model)
    last_epoch = state.epoch
    tracker.log_encoder("encoder_last", model.encoder_q.backbone, example, step=last_epoch)
    best_file = resolve(run_dir).join("best_encoder.pt")
    if best_file.exists():
        import io

        best = torch.load(io.BytesIO(best_file.read_bytes()), map_location="cpu", weights_only=True)
        model.encoder_q.load_state_dict(best["encoder_q"])
        tracker.log_encoder("encoder_best", model.encoder_q.backbone, example, step=int(best["epoch"]))
