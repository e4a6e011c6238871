"""Supervised training on the same engine: ``hierclr finetune`` with CE, SupCon, CLCE or VarCon.

Worker side (:class:`Supervised`): every augmented view is a sample; the step is
:func:`~hierclr.methods.supervised_step.finetune_loss` (lr on a warm-up + cosine schedule per parameter group);
every ``eval.every`` epochs the ``val`` split is predicted (each row on exactly one worker) and rank 0 scores
it: top-1/top-5 and the accuracy per hierarchy level. HCAL (:mod:`hierclr.methods.hcal`) extends both classes.

Driver side (:class:`SupervisedPlan`): a labelled train / val pair with one label space, an optional label
subset (semi-supervised protocol), ``model.init`` checked on the driver before any worker starts, and at the
end the learning curves and the trunk as MLflow models.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import nn

from hierclr.config.supervised import SupervisedConfig
from hierclr.data.streams import eval_batches
from hierclr.eval.hierarchical import hierarchy_metrics, parent_tables
from hierclr.io.fs import resolve
from hierclr.methods.base import Method, Plan, Prepared, fraction_ids
from hierclr.methods.supervised_step import finetune_loss, predict
from hierclr.models.classifiers import SupervisedNet
from hierclr.runtime.metrics import gather_objects


# ------------------------------------------------------------------------------------------- pure helpers
def level_sizes(level_map: np.ndarray) -> list[int]:
    return [int(level_map[:, level].max()) + 1 for level in range(level_map.shape[1])]


def build_network(cfg: SupervisedConfig, level_map: np.ndarray) -> nn.Module:
    """The finetune network, or HCAL's (:func:`hierclr.methods.hcal.build_hcal_network`) for ``task: hcal``."""
    m = cfg.model
    if cfg.task == "hcal":
        from hierclr.methods.hcal import build_hcal_network

        net = build_hcal_network(cfg, level_sizes(level_map))
    else:
        dim = m.dim if cfg.loss.uses_projection else None  # CE and paper-form CLCE read no projection head
        net = SupervisedNet(m.backbone, level_sizes(level_map)[0], dim=dim, hidden_dim=m.hidden_dim,
                            cifar_stem=m.cifar_stem)
        if m.classifier_init_std is not None:
            nn.init.normal_(net.classifier.weight, 0.0, m.classifier_init_std)
            nn.init.zeros_(net.classifier.bias)
    if m.sync_bn:  # before DDP wraps it; in eval mode (the linear protocol's frozen trunk) it is plain BN
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
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
        from hierclr.methods.hcal import hcal_head_groups

        groups += hcal_head_groups(net.head, cfg)
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


# ------------------------------------------------------------------------------------------- worker side
class Supervised(Method):
    """finetune (CE / SupCon / CLCE / VarCon) in the epoch loop."""

    ddp_kwargs = {"find_unused_parameters": False}  # noqa: RUF012

    def __init__(self, cfg: SupervisedConfig, run, env, tracker=None) -> None:
        import ray.train

        super().__init__(cfg, run, env, tracker)
        self.level_map_np = np.asarray(run.level_map, np.int64)
        self.level_map = torch.as_tensor(self.level_map_np, device=env.device)
        self.parents = [torch.as_tensor(p, device=env.device) for p in parent_tables(self.level_map_np)]
        self.val_it = ray.train.get_dataset_shard("val")
        self.select_metric = cfg.select_metric

    def build(self) -> nn.Module:
        return build_network(self.cfg, self.level_map_np)

    def init_weights(self, core) -> None:
        init_weights(core, self.cfg, self.run.tracking_uri)

    def param_groups(self, core) -> list[dict]:
        return param_groups(core, self.cfg)

    def set_lr(self, optimizer, epoch: int) -> float:
        factor = lr_factor(self.cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = g["peak_lr"] * factor
        return self.cfg.optim.lr * factor

    def train_mode(self, core) -> None:
        if self.cfg.model.freeze_backbone:
            core.backbone.eval()  # linear protocol: the frozen trunk's BatchNorm keeps its statistics

    def _batches(self, iterator):
        ev = self.cfg.data.transform_config().eval
        return eval_batches(iterator, ev.mean, ev.std, self.env.per_worker_batch)

    def step_loss(self, model, x, labels, generator) -> tuple[torch.Tensor, dict]:
        return finetune_loss(model, self.cfg, x, labels[:, 0])

    def step(self, model, optimizer, batch, views, generator, epoch):
        device, amp = self.env.device, self.env.amp_dtype
        x = torch.cat(views)
        labels = batch["labels"].to(device).long().reshape(len(batch["id"]), -1).repeat(len(views), 1)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, metrics = self.step_loss(model, x, labels, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return metrics

    def evaluate(self, model, epoch: int) -> dict[str, float]:
        return evaluate(model, self.cfg, self._batches(self.val_it), self.level_map, self.parents, self.env.device)

    def best_record(self, epoch: int, value: float) -> dict:
        return {"epoch": epoch, "metric": self.select_metric, "value": value}

    def best_value(self, best: dict | None) -> float | None:
        return best["value"]

    def save_best(self, core, best: dict) -> None:
        buf = io.BytesIO()
        torch.save({**best, "model": {k: v.cpu() for k, v in core.state_dict().items()}}, buf)
        resolve(self.run.run_dir).join("best_model.pt").write_bytes_atomic(buf.getvalue())

    def epoch_line(self, row: dict[str, float]) -> str:
        parts = [f"epoch {int(row['epoch'])}/{self.cfg.optim.epochs - 1}",
                 f"loss {row.get('loss/total', float('nan')):.4f}", f"lr {row['lr']:.4g}",
                 f"{row['train/images_per_s']:.0f} img/s"]
        accs = [f"{k.split('/')[1]} {row[k]:.4f}" for k in sorted(row) if k.startswith("acc/")]
        if accs:
            parts.append("val " + " ".join(accs))
        if "val/hvr" in row:
            parts.append(f"HVR {row['val/hvr']:.4f}")
        return "hierclr | " + " | ".join(parts)


# ------------------------------------------------------------------------------------------- driver side
class SupervisedPlan(Plan):
    """The driver side of ``hierclr finetune``."""

    name = "supervised"
    method = Supervised
    config_cls = SupervisedConfig
    resume_sections = ("task", "model", "loss", "hcal")

    def _label_space(self, train_src, val_src) -> np.ndarray:
        cfg = self.cfg
        if not train_src.classes:
            raise ValueError(f"data.train ({cfg.data.train}) has no class labels: `hierclr {cfg.task}` needs a "
                             "labelled dataset (ImageFolder classes, parquet with labels)")
        if val_src.classes and val_src.classes != train_src.classes:
            raise ValueError(f"data.val ({cfg.data.val}) has classes {list(val_src.classes)[:5]}..., different "
                             f"from data.train's {list(train_src.classes)[:5]}...: accuracy needs one label space")
        return train_src.level_map()

    def _subset_ids(self, train_src) -> np.ndarray:
        """The dataset ids of ``subset``: the files of ``file_list``, the ids of ``ids_file``, or a seeded per-class
        fraction of the labels (read once)."""
        from hierclr.eval.subsets import per_class_subset

        sub = self.cfg.subset
        if sub.file_list is not None:
            from hierclr.data.keys import listed_ids

            return listed_ids(train_src, sub.file_list)
        if sub.ids_file is not None:
            loc = resolve(sub.ids_file)
            if not loc.exists():
                raise FileNotFoundError(f"subset.ids_file: {sub.ids_file} does not exist")
            ids = np.load(io.BytesIO(loc.read_bytes()))
            if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) == 0:
                raise ValueError(f"subset.ids_file {sub.ids_file}: expected a non-empty 1-D integer array of "
                                 "dataset ids")
            return np.unique(ids.astype(np.int64))
        ids, labels = train_src.labels()
        return per_class_subset(ids, labels, sub.fraction, seed=sub.seed)

    def extra_streams(self, train_src, scfg, start_epoch: int) -> dict:
        return {}

    def prepare(self, start_epoch: int) -> Prepared:
        from hierclr.data import embed_stream, train_stream
        from hierclr.runtime.runs import stream_config
        from hierclr.runtime.tracking import resolved_uri

        cfg = self.cfg
        d = cfg.data
        train_src, val_src = self.open_splits()
        level_map = self._label_space(train_src, val_src)
        if not self.rows_checked:  # WebDataset tars: counted by the index pass just now
            self.check_rows(train_src.num_rows)
        keep_ids = self._subset_ids(train_src) if cfg.subset.active else fraction_ids(train_src, d)
        num_train = train_src.num_rows if keep_ids is None else len(keep_ids)
        if keep_ids is not None and num_train < cfg.optim.batch_size:  # a subset is chosen on Ray (labels, keys)
            raise ValueError(f"data.train has {num_train} images in the subset, fewer than one global batch "
                             f"(optim.batch_size={cfg.optim.batch_size})")
        if cfg.model.init:  # load it once here, so a wrong file fails before any worker starts
            init_weights(build_network(cfg, level_map), cfg, resolved_uri(cfg.tracking))
        scfg = stream_config(cfg)
        streams = {"train": train_stream(train_src, scfg, keep_ids=keep_ids), "val": embed_stream(val_src, scfg),
                   **self.extra_streams(train_src, scfg, start_epoch)}
        tags = {"hierclr.method": cfg.method, "hierclr.task": cfg.task}
        if cfg.model.init:
            tags["hierclr.init"] = cfg.model.init
        levels = "-".join(str(int(level_map[:, lv].max()) + 1) for lv in range(level_map.shape[1]))
        subset = " (label subset)" if cfg.subset.active else f" of {train_src.num_rows} (data.fraction {d.fraction:g})"
        header = (f"{cfg.method}, {cfg.resources.num_workers} worker(s), {num_train} images"
                  f"{subset if keep_ids is not None else ''}, classes per level {levels}, "
                  f"epochs {start_epoch}..{cfg.optim.epochs - 1}")
        return Prepared(streams=streams, run_fields={"level_map": level_map.tolist()}, tags=tags, header=header,
                        train_src=train_src, extras={"level_map": level_map})

    def final_artifacts(self, tracker, state, run_dir: str, prepared: Prepared, bad: list) -> None:
        """Resolved config, history, learning curves, and the last / best trunks as MLflow PyTorch models
        (``encoder_*``: avgpool features, what kNN / linear evaluation read)."""
        from hierclr.runtime.artifacts import log_curves

        cfg = self.cfg
        tracker.log_text(cfg.to_yaml(), "config/resolved.yaml")
        log_curves(tracker, state.history)
        tracker.log_dict({"history": state.history, "best": state.best}, "history.json")
        if not cfg.tracking.log_models:
            return
        size = cfg.data.transform_config().eval.crop
        example = torch.zeros(2, 3, size, size)
        net = build_network(cfg, prepared.extras["level_map"])
        net.load_state_dict(state.model)
        tracker.log_encoder("encoder_last", net.backbone, example, step=state.epoch)
        best_file = resolve(run_dir).join("best_model.pt")
        if best_file.exists():
            best = torch.load(io.BytesIO(best_file.read_bytes()), map_location="cpu", weights_only=True)
            net.load_state_dict(best["model"])
            tracker.log_encoder("encoder_best", net.backbone, example, step=int(best["epoch"]))

