"""``hierclr evaluate``: the paper's evaluation protocols for one encoder, on Ray, into MLflow.

1. The trunk is loaded from any source :func:`hierclr.models.loading.load_backbone` reads (a clear error names
   missing / unexpected keys).
2. Features: Ray Train workers embed the ``train`` and ``val`` splits with the frozen trunk (eval mode,
   avgpool features), each row on exactly one worker; every worker writes its shard into the run's checkpoint
   (Ray Train persists all ranks' files into one directory) and the driver assembles them by dataset id.
3. Feature protocols on the driver (:mod:`hierclr.eval.protocols`): kNN (faiss, chunked), K-means clustering
   (NMI / AMI / Hungarian accuracy), hierarchy AMI per label level (paper Table 11).
4. Trained protocols as ``hierclr finetune`` runs on Ray Train, nested under this run in MLflow: the linear
   probe (frozen trunk in eval mode, lr 5.0, steps at 60 / 80) and semi-supervised fine-tuning on seeded
   per-class label fractions.
5. Output: ``results.json`` and the MLflow run's metrics, written as each protocol finishes (a later failure
   keeps them), a results table (printed), a t-SNE plot of the val features coloured by class (and by coarse
   class with a hierarchy), all logged to an MLflow run nested under the run that produced the checkpoint when
   there is one.

Every local path is made absolute and every trained protocol's config validated before Ray starts.
"""
from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hierclr.config.evaluate import EvaluateConfig
from hierclr.runtime.runs import TrackingLink, data_path, quiet_ray_data, start_ray

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    results: dict[str, float]
    output_dir: str
    results_path: str
    mlflow_run_id: str | None
    parent_run_id: str | None


# ------------------------------------------------------------------------------------------ the workers
def feature_loop(loop_config: dict) -> None:
    """Ray Train worker: embed this worker's rows of every split with the frozen trunk; report them as files."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from hierclr.data.streams import eval_batches
    from hierclr.data.transforms import TransformConfig
    from hierclr.eval.precision import autocast_dtype
    from hierclr.models.backbones import build_backbone

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(loop_config["cpus"])))
    trunk, _ = build_backbone(loop_config["backbone"], cifar_stem=loop_config["cifar_stem"])
    trunk.load_state_dict(ray.get(loop_config["weights"]))
    trunk = trunk.to(device).eval()
    ev = TransformConfig.model_validate(loop_config["transforms"]).eval
    amp = autocast_dtype(loop_config["precision"], device.type)
    rows = 0
    with tempfile.TemporaryDirectory(prefix="hierclr-feats-") as tmp:
        for split in loop_config["splits"]:
            ids, labels, feats = [], [], []
            with torch.no_grad():
                for x, i, y in eval_batches(ray.train.get_dataset_shard(split), ev.mean, ev.std,
                                            loop_config["batch_size"]):
                    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        f = trunk(x.to(device, non_blocking=True))
                    feats.append(f.float().cpu().numpy())
                    ids.append(i.numpy())
                    labels.append(y.numpy())
            dim = loop_config["feature_dim"]
            np.savez(Path(tmp, f"{split}-rank{rank:04d}.npz"),
                     ids=np.concatenate(ids) if ids else np.zeros(0, np.int64),
                     labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
                     feats=np.concatenate(feats) if feats else np.zeros((0, dim), np.float32))
            rows += sum(len(a) for a in ids)
        ray.train.report({"rows": rows}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _assemble(directory: str, split: str) -> dict[str, np.ndarray]:
    parts = [np.load(p) for p in sorted(Path(directory).glob(f"{split}-rank*.npz"))]
    if not parts:
        raise RuntimeError(f"no {split} features were written (checkpoint {directory})")
    ids = np.concatenate([p["ids"] for p in parts])
    order = np.argsort(ids, kind="stable")
    return {"ids": ids[order], "labels": np.concatenate([p["labels"] for p in parts])[order],
            "feats": np.concatenate([p["feats"] for p in parts])[order]}


def extract_features(cfg: EvaluateConfig, weights: dict, feature_dim: int, sources: dict, storage: str,
                     name: str) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {"ids", "labels", "feats"}}`` for every split in ``sources`` (``{split: ShardSource}``)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hierclr.data import embed_stream, train_data_config
    from hierclr.data.streams import StreamConfig

    scfg = StreamConfig(transforms=cfg.data.transform_config(), batch_size=cfg.data.decode_batch_size,
                        num_cpus=cfg.data.num_cpus, max_bad_fraction=cfg.data.max_bad_fraction)
    streams = {split: embed_stream(src, scfg) for split, src in sources.items()}
    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
    trainer = TorchTrainer(
        feature_loop,
        train_loop_config={"weights": ray.put(weights), "backbone": cfg.model.backbone,
                           "cifar_stem": cfg.model.cifar_stem, "transforms": cfg.data.transform_config().model_dump(),
                           "batch_size": 256, "splits": list(sources), "feature_dim": feature_dim,
                           "cpus": res.cpus_per_worker, "precision": cfg.feature_precision},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        datasets={split: s.dataset for split, s in streams.items()},
        dataset_config=train_data_config(tuple(sources)),
        run_config=RunConfig(name=name, storage_path=storage),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        return {split: _assemble(d, split) for split in sources}


# ------------------------------------------------------------------------------------------ the driver
def _source_context(source: str) -> tuple[str | None, object | None]:
    """(MLflow run id recorded with a hierclr checkpoint, its prototypes) for nesting and Table 11."""
    from hierclr.io.checkpoint import latest_checkpoint, load_checkpoint
    from hierclr.io.fs import resolve
    from hierclr.models.loading import is_mlflow_source, parse_mlflow_source

    if source.startswith("models:/"):
        return None, None
    if is_mlflow_source(source):
        return parse_mlflow_source(source)[0], None
    if not resolve(source).is_dir():
        return None, None
    try:
        state = load_checkpoint(latest_checkpoint(source))
    except (ValueError, FileNotFoundError):
        return None, None
    return state.mlflow_run_id, state.prototypes


def _prototype_rows(prototypes, train_src, ids: np.ndarray) -> np.ndarray | None:
    """The prototype assignments ``(len(ids), L)`` of these dataset ids, or None when the prototypes were not
    computed on this split (their row count is not the split's)."""
    if prototypes is None:
        return None
    a = prototypes.assignments.cpu().numpy()
    return a[ids] if len(a) == train_src.num_rows else None


def evaluation_run_name(name: str, source: str) -> str:
    """``evaluate <preset> <what was evaluated>``: the run directory and checkpoint, the file, or the MLflow run
    (its id's first 8 characters) and model, so evaluations of different encoders are told apart in the UI."""
    text = str(source).rstrip("/")
    for prefix in ("mlflow:", "runs:/", "models:/"):
        if text.startswith(prefix):
            head, _, model = text[len(prefix):].partition("/")
            return f"evaluate {name} {prefix.rstrip('/')}{head[:8]}{'/' + model if model else ''}"
    parts = Path(text).parts
    last = parts[-2:] if len(parts) > 1 and (parts[-1].startswith("checkpoint_") or Path(text).suffix) else parts[-1:]
    return f"evaluate {name} {'/'.join(last)}"


def _tracking_under(cfg: EvaluateConfig, parent: str | None):
    """The tracking section of the evaluation run: the parent's experiment when the parent is in this store."""
    from hierclr.runtime.tracking import resolved_uri

    tracking = cfg.tracking.model_copy(update={"uri": resolved_uri(cfg.tracking)})
    if not (parent and tracking.enabled):
        return tracking, None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking.uri)
        exp = client.get_experiment(client.get_run(parent).info.experiment_id)
    except Exception as e:  # noqa: BLE001  a run from another store: log standalone, say why
        log.warning("the checkpoint's MLflow run %s is not in %s (%s): the evaluation is not nested", parent,
                    tracking.uri, e)
        return tracking, None
    return tracking.model_copy(update={"experiment": exp.name}), parent


@dataclass(frozen=True)
class TrainedRun:
    """One linear / semi-supervised ``hierclr finetune`` run of the evaluation, its config validated up front."""

    label: str  # "linear", "semi0.01", ...: the MLflow run's protocol tag and the results' prefix
    config: object  # SupervisedConfig
    fraction: float | None = None  # semi without subset files: the per-class fraction drawn after the feature pass
    ids_file: Path | None = None  # ... and where its dataset ids are written


def trained_runs(cfg: EvaluateConfig, out: Path, tracking) -> list[TrainedRun]:
    """The trained protocols' ``hierclr finetune`` configs, validated and their data checked (paths, row count)
    before Ray starts and before the feature pass, so that a bad ``linear.set`` costs seconds, not the features.
    ``cfg``'s paths must be absolute (:meth:`EvaluateConfig.with_absolute_paths`): the runs' workers run elsewhere."""
    from hierclr.config.supervised import supervised_tree, validate_supervised
    from hierclr.methods import plan_for
    from hierclr.runtime.runs import check_data_paths, check_row_count

    d = cfg.data
    common = [f"model.init={cfg.source}", f"model.backbone={cfg.model.backbone}",
              f"model.cifar_stem={str(cfg.model.cifar_stem).lower()}", f"data.train={d.train}", f"data.val={d.val}",
              f"data.format={d.format}", f"data.builtin_cache={d.builtin_cache}",
              f"data.num_cpus={d.num_cpus}", f"data.decode_batch_size={d.decode_batch_size}",
              f"tracking.uri={tracking.uri}", f"tracking.experiment={tracking.experiment}",
              f"tracking.enabled={str(cfg.tracking.enabled).lower()}", f"checkpoint.storage_path={out / 'runs'}",
              f"seed={cfg.seed}", "tracking.log_models=false"]
    if d.hierarchy:
        common.append(f"data.hierarchy={d.hierarchy}")
    for key, value in cfg.resources.model_dump().items():
        if value is not None:
            common.append(f"resources.{key}={json.dumps(value)}")
    runs = []
    for which in ("linear", "semi"):
        if which not in cfg.protocols:
            continue
        proto = getattr(cfg, which)
        if which == "linear":
            variants = [("linear", [], None, None)]
        else:
            variants = []
            for i, f in enumerate(cfg.semi.fractions):
                if cfg.semi.subset_files:
                    variants.append((f"semi{f:g}", [f"subset.file_list={cfg.semi.subset_files[i]}",
                                                    "subset.fraction=null", "subset.ids_file=null"], None, None))
                else:  # a seeded per-class draw from the feature pass's labels, written before the run
                    ids_file = out / f"subset_{f:g}.npy"
                    variants.append((f"semi{f:g}", [f"subset.ids_file={ids_file}", "subset.fraction=null",
                                                    "subset.file_list=null"], f, ids_file))
        for label, extra, fraction, ids_file in variants:
            fcfg = validate_supervised(
                supervised_tree(proto.config, [*common, f"name={cfg.name}-{which}", *proto.set, *extra]),
                f"{which}.config {proto.config} (protocol {label})")
            check_data_paths(fcfg)
            check_row_count(fcfg, plan_for(fcfg))
            runs.append(TrainedRun(label, fcfg, fraction, ids_file))
    return runs


def _trained_protocol(run: TrainedRun, link: TrackingLink, echo) -> dict[str, float]:
    """Run one trained protocol; its best and last top-1 / top-5 (and best epoch)."""
    from hierclr.runtime.driver import run_training

    res = run_training(run.config, echo=echo, link=link)
    hist = [r for r in res.history if "acc/top1" in r]
    if not hist:
        return {}
    best = max(hist, key=lambda r: r["acc/top1"])
    return {"top1_best": best["acc/top1"], "top5_best": best.get("acc/top5", float("nan")),
            "top1_last": hist[-1]["acc/top1"], "top5_last": hist[-1].get("acc/top5", float("nan")),
            "best_epoch": best["epoch"]}


def results_table(results: dict[str, float]) -> str:
    width = max((len(k) for k in results), default=10)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                     for k, v in results.items())


def _make_output_dir(cfg: EvaluateConfig, out: Path) -> None:
    """Create ``out`` (before Ray: an unwritable ``output_dir`` fails in seconds)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output_dir {cfg.output_dir} is not writable: {e.strerror or e} ({e.filename or out})") from None


def run_evaluate(cfg: EvaluateConfig, *, echo=print) -> EvaluateResult:
    """Evaluate ``cfg.source`` with ``cfg.protocols``; returns the results and where they were written.

    Before Ray starts: every local path is made absolute (the feature and protocol workers run in other
    directories), the trunk is loaded (a wrong checkpoint names its keys), the data paths and every trained
    protocol's config are checked, the output directory is created. Each protocol's numbers are written
    (``results.json``, MLflow) as soon as it finishes (:class:`~hierclr.runtime.eval_results.EvaluationRecord`); a
    failure keeps them, marks the evaluation's MLflow run FAILED with the cause in ``hierclr.error``, and raises."""
    from hierclr.models.backbones import build_backbone
    from hierclr.models.loading import load_backbone
    from hierclr.runtime.runs import check_data_paths
    from hierclr.runtime.tracking import resolved_uri

    cfg = cfg.with_absolute_paths()
    trunk, feature_dim = build_backbone(cfg.model.backbone, cifar_stem=cfg.model.cifar_stem)
    # fails here, before Ray, on a wrong checkpoint; an mlflow:<run id> source is read from tracking.uri
    kind = load_backbone(trunk, cfg.source, tracking_uri=resolved_uri(cfg.tracking))
    weights = {k: v.detach().cpu() for k, v in trunk.state_dict().items()}
    parent, prototypes = _source_context(cfg.source)
    check_data_paths(cfg)
    tracking, parent = _tracking_under(cfg, parent)
    out = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trained = trained_runs(cfg, out, tracking)
    _make_output_dir(cfg, out)
    try:
        start_ray(cfg)
        quiet_ray_data()
        return _evaluate(cfg, kind, weights, feature_dim, parent, prototypes, tracking, trained, out, echo)
    finally:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # failed before writing anything: no empty folder left


def _evaluate(cfg: EvaluateConfig, kind: str, weights: dict, feature_dim: int, parent, prototypes, tracking,
              trained: list[TrainedRun], out: Path, echo) -> EvaluateResult:
    from hierclr.clustering.settings import KMeansSettings
    from hierclr.config.loader import flatten
    from hierclr.data import open_source
    from hierclr.eval.protocols import (
        clustering_protocol,
        hierarchy_protocol,
        knn_protocol,
        prototype_clustering_protocol,
    )
    from hierclr.eval.subsets import per_class_subset
    from hierclr.runtime.driver import failure_cause
    from hierclr.runtime.eval_results import EvaluationRecord
    from hierclr.runtime.tracking import Tracker

    train_src = open_source(data_path(cfg.data.train, cfg), format=cfg.data.format, hierarchy=cfg.data.hierarchy,
                            verify=cfg.data.verify_shards)
    val_src = open_source(data_path(cfg.data.val, cfg), format=cfg.data.format, hierarchy=cfg.data.hierarchy,
                          verify=cfg.data.verify_shards)
    if not train_src.classes or (val_src.classes and val_src.classes != train_src.classes):
        raise ValueError(f"data.train ({cfg.data.train}) and data.val ({cfg.data.val}) need the same class labels")
    level_map = train_src.level_map()
    num_classes = len(train_src.classes)

    tags = {"hierclr.kind": "evaluation", "hierclr.source": cfg.source, "hierclr.source_kind": kind,
            "hierclr.protocols": ",".join(cfg.protocols)}
    if parent:
        tags["mlflow.parentRunId"] = parent
    tracker = Tracker.start(tracking, run_name=evaluation_run_name(cfg.name, cfg.source), params=flatten(cfg),
                            tags=tags)
    echo(f"hierclr evaluate: {cfg.source} ({kind}, {cfg.model.backbone}) on {cfg.data.train} / {cfg.data.val}; "
         f"protocols {', '.join(cfg.protocols)}; output {out}; MLflow "
         f"{'run ' + tracker.run_id + (' nested under ' + parent if parent else '') if tracker.enabled else 'off'}")
    record = EvaluationRecord(out / "results.json", {
        "source": cfg.source, "source_kind": kind, "backbone": cfg.model.backbone, "data": cfg.data.train,
        "protocols": list(cfg.protocols), "mlflow_run_id": tracker.run_id, "parent_run_id": parent}, tracker)
    feats = None
    step = None
    try:
        cm = cfg.clustering.methods
        need = {"knn": ("train", "val"), "hierarchy": ("train",), "semi": () if cfg.semi.subset_files else ("train",),
                "clustering": ((cfg.clustering.split,) if "kmeans" in cm else ())
                + (("train",) if "prototypes" in cm and prototypes is not None else ())}
        splits = sorted({s for p in cfg.protocols for s in need.get(p, ())} | ({"val"} if cfg.plot != "none" else set()))
        if splits:
            step = "features"
            t0 = time.perf_counter()
            feats = extract_features(cfg, weights, feature_dim, {s: {"train": train_src, "val": val_src}[s]
                                                                  for s in splits}, str(out), "features")
            record.add(step, {"time/features": time.perf_counter() - t0})
        if "knn" in cfg.protocols:
            step = "knn"
            tr, va = feats["train"], feats["val"]
            record.add(step, knn_protocol(tr["feats"][tr["labels"] >= 0], tr["labels"][tr["labels"] >= 0],
                                          va["feats"][va["labels"] >= 0], va["labels"][va["labels"] >= 0],
                                          ks=cfg.knn.ks, temperature=cfg.knn.temperature, num_classes=num_classes,
                                          backend=cfg.knn.backend, chunk_size=cfg.knn.chunk_size))
        if "clustering" in cfg.protocols and "prototypes" in cm:  # the paper's (Table 4)
            step = "clustering/prototypes"
            s = feats["train"] if prototypes is not None else None
            assigns = _prototype_rows(prototypes, train_src, s["ids"]) if s is not None else None
            if assigns is None:
                echo("clustering: prototypes (the paper's protocol) skipped: the source has no prototypes computed "
                     f"on {cfg.data.train}")
            else:
                record.add(step, prototype_clustering_protocol(assigns, s["labels"], cfg.clustering.prototype_levels))
        if "clustering" in cfg.protocols and "kmeans" in cm:  # the HIRL script's
            step = "clustering/kmeans"
            s = feats[cfg.clustering.split]
            keep = s["labels"] >= 0
            ks = cfg.clustering.ks or (num_classes, num_classes * cfg.clustering.overcluster)
            ks = tuple(k for k in ks if k <= keep.sum())
            record.add(step, clustering_protocol(s["feats"][keep], s["labels"][keep], ks,
                                                 KMeansSettings(nredo=cfg.clustering.nredo, seed=cfg.seed)))
        if "hierarchy" in cfg.protocols:
            step = "hierarchy"
            s = feats["train"]
            keep = s["labels"] >= 0
            by_level = level_map[s["labels"][keep]]
            assigns = None
            if cfg.hierarchy.prototypes and prototypes is not None:
                assigns = _prototype_rows(prototypes, train_src, s["ids"][keep])
            record.add(step, hierarchy_protocol(s["feats"][keep], by_level, prototype_assignments=assigns,
                                                seed=cfg.seed, max_samples=cfg.hierarchy.max_samples))
        for run in trained:
            step = run.label
            if run.ids_file is not None:  # semi: this fraction's seeded per-class draw from the feature labels
                tr = feats["train"]
                _save_ids(run.ids_file, per_class_subset(tr["ids"], tr["labels"], run.fraction, seed=cfg.seed))
            link = TrackingLink(parent_run_id=tracker.run_id, run_name=f"{cfg.name} {run.label}",
                                tags={"hierclr.protocol": run.label})
            scores = _trained_protocol(run, link, echo)
            record.add(step, {f"{run.label}/{k}": v for k, v in scores.items()})
        step = "outputs"
        results = record.results
        table = results_table(results)
        echo("hierclr evaluate results:\n" + table)
        payload = record.finish()
        tracker.log_dict(payload, "results.json")
        tracker.log_text(table + "\n", "results.txt")
        tracker.log_text(cfg.to_yaml(), "config/evaluate.yaml")
        if cfg.plot != "none" and feats is not None:
            _log_embedding_plot(tracker, feats["val"], level_map, train_src, cfg, out)
    except Exception as err:
        try:
            record.fail(step, failure_cause(err))
        finally:
            tracker.finish("FAILED")
        raise
    except BaseException:  # Ctrl-C: stopped, not failed; results.json keeps status "running" and what was done
        tracker.finish("KILLED")
        raise
    run_id = tracker.run_id
    tracker.finish("FINISHED")
    return EvaluateResult(results=results, output_dir=str(out), results_path=str(record.path),
                          mlflow_run_id=run_id, parent_run_id=parent)


def _save_ids(path: Path, ids: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, ids)
    path.write_bytes(buf.getvalue())


def coarse_classes(y: np.ndarray, level_map: np.ndarray, source) -> tuple[np.ndarray | None, list[str] | None]:
    """The coarsest hierarchy level's label of each fine label ``y`` and that level's class names (the t-SNE's
    second panel: "animal" / "vehicle", not 0 / 1); ``(None, None)`` without a hierarchy."""
    if level_map.shape[1] < 2:
        return None, None
    names = source.hierarchy.names[-1] if source.hierarchy is not None else None
    return level_map[y, -1], (list(names) if names is not None else None)


def _log_embedding_plot(tracker, val: dict, level_map: np.ndarray, source, cfg: EvaluateConfig, out: Path) -> None:
    from hierclr.viz.embedding import embedding_plot

    keep = val["labels"] >= 0
    y = val["labels"][keep]
    coarse, coarse_names = coarse_classes(y, level_map, source)
    fig = embedding_plot(val["feats"][keep], y, coarse_labels=coarse, class_names=list(source.classes) or None,
                         coarse_names=coarse_names, max_points=cfg.plot_points, seed=cfg.seed)
    path = out / "embedding_tsne.png"
    fig.savefig(path, dpi=100)
    tracker.log_artifact(str(path), "plots")
