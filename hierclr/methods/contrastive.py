"""Contrastive pretraining on the MoCo v2 engine: HCSC, MoCo v2 and PCL v2 (``hierclr pretrain``).

Worker side (:class:`Contrastive`), per epoch:

1. E-step (HCSC / PCL, after warm-up): the momentum encoder embeds this worker's share of the ``embed``
   stream (``clustering.features: embed_pass``), or, with ``train_keys``, the worker's
   :class:`~hierclr.methods.key_bank.KeyBank` (the latest training key of the ids it owns) is the shard, the
   pass running only at the first E-step of the process; the (ids, features) shard goes to the clustering
   service (:mod:`hierclr.service`) as an object ref; every worker receives the same
   :class:`~hierclr.clustering.Prototypes` for the epoch, and HCSC builds their
   :class:`~hierclr.losses.SelectionCache` from the queue. With labels, the AMI of the prototypes against
   every label level (paper Table 11) is reported.
2. M-step: :func:`~hierclr.methods.contrastive_step.hcsc_train_step` (MoCo queue shared across workers through
   the all-gathered enqueue), lr on a per-epoch cosine schedule. With labels, the ICSC masks are counted
   against them on the device and summed over the ranks once (paper Fig. 5).
3. Every ``eval.every`` epochs: weighted kNN (backbone features, Eq. 11) on the labelled ``val`` split, the
   train split's features staying sharded on the workers (per-shard top-k, merged on rank 0).

Driver side (:class:`ContrastivePlan`): the train / embed / val streams, the clustering service, and at the
end the prototype tree, chains of images, learning curves and the encoders as MLflow models.
"""
from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from hierclr.config.pretrain import PretrainConfig
from hierclr.data.streams import eval_batches
from hierclr.eval.knn import knn_accuracy_from_topk, knn_topk, merge_topk
from hierclr.eval.precision import FeaturePrecision, autocast_dtype, feature_dtype
from hierclr.eval.selection_quality import SelectionCounter, selection_metrics
from hierclr.io.fs import resolve
from hierclr.losses import HCSCObjective, PCLObjective
from hierclr.methods.base import Method, Plan, Prepared, eval_due, fraction_ids
from hierclr.methods.contrastive_step import embed_pass, hcsc_train_step
from hierclr.methods.key_bank import KeyBank
from hierclr.models import MoCo
from hierclr.models.buffers import broadcast_buffers
from hierclr.runtime.artifacts import log_hierarchy
from hierclr.runtime.metrics import gather_objects, sum_over_ranks


# ------------------------------------------------------------------------------------------- pure helpers
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


def ami_due(cfg: PretrainConfig, epoch: int) -> bool:
    """Whether an E-step epoch logs the prototype-label AMI: every ``eval.ami_every`` E-steps and the last epoch."""
    return (epoch - cfg.loss.warmup_epochs) % cfg.eval.ami_every == 0 or epoch == cfg.optim.epochs - 1


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


def sync_embedding_buffers(model, mode: str) -> None:
    """``model.embed_buffers``: with ``rank0`` every rank takes rank 0's BatchNorm statistics of both encoders
    before an embedding pass, so all ranks embed with the same network, as the official code (DDP with
    ``broadcast_buffers=True``); ``per_rank`` leaves each rank's own. A collective under DDP (every rank calls
    it); the queue is not touched."""
    if mode == "rank0":
        core = model.module if hasattr(model, "module") else model
        broadcast_buffers(core.encoder_q)
        broadcast_buffers(core.encoder_k)


def distributed_knn(train: dict, val: dict, *, ks, num_classes: int, temperature: float,
                    precision: FeaturePrecision = "fp32") -> dict[str, float]:
    """kNN top-1 with the train features sharded over the ranks: val features are all-gathered (in
    ``precision``: fp32 by default), each rank takes the top-k of every val row within its shard, rank 0
    merges the shards' lists and votes. Returns the accuracies on every rank (rank 0's are the ones reported)."""
    keep = val["labels"] >= 0
    vals = gather_objects((val["backbone"][keep].to(feature_dtype(precision)), val["labels"][keep]))
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


# ------------------------------------------------------------------------------------------- worker side
class Contrastive(Method):
    """HCSC / MoCo v2 / PCL v2 in the epoch loop."""

    # Training steps keep each rank's BN buffers (no broadcast per step); embedding passes take rank 0's first
    # (model.embed_buffers, as the official code's DDP forward does)
    ddp_kwargs = {"broadcast_buffers": False}  # noqa: RUF012
    select_metric = "knn/top1_best"

    def __init__(self, cfg: PretrainConfig, run, env, tracker=None) -> None:
        import ray.train

        super().__init__(cfg, run, env, tracker)
        self.objective = build_objective(cfg)
        self.service = None
        if cfg.uses_clustering:
            from hierclr.service import connect

            self.service = connect(run.service_name)
        self.embed_it = ray.train.get_dataset_shard("embed")
        self.val_it = ray.train.get_dataset_shard("val") if run.has_val else None
        self.level_map = np.asarray(run.level_map, np.int64) if run.level_map else None
        self.labels_by_id = None  # (N, L) labels of every id, filled at the first E-step when AMI / selection is on
        self.fine_by_id = None  # its level-0 column on the device, for the selection counts
        self.protos = None  # this epoch's prototypes (None in warm-up and for MoCo)
        self.selection_cache = None  # HCSC: their keep-probability tables, kept current by every enqueue
        self.key_bank = None  # clustering.features: train_keys: the latest key of the ids this rank owns
        if cfg.uses_clustering and cfg.clustering.features == "train_keys":
            self.key_bank = KeyBank(run.num_rows, cfg.model.dim, env.rank, env.world, env.device)
        self.estep_done = False  # the first E-step of this process runs the embed pass (train_keys too)
        self.check_ids = False
        self.selection = None

    def build(self) -> MoCo:
        return build_model(self.cfg)

    def param_groups(self, core):
        return core.parameters()

    def set_lr(self, optimizer, epoch: int) -> float:
        lr = epoch_lr(self.cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _batches(self, iterator):
        ev = self.cfg.data.transform_config().eval
        return eval_batches(iterator, ev.mean, ev.std, self.env.per_worker_batch)

    def _embed(self, model, iterator, *, head: bool, backbone: bool, amp_dtype: torch.dtype | None = None) -> dict:
        env = self.env
        sync_embedding_buffers(model, self.cfg.model.embed_buffers)
        return embed_pass(model, self._batches(iterator), head=head, backbone=backbone, device=env.device,
                          channels_last=env.channels_last, amp_dtype=amp_dtype)

    def before_epoch(self, model, epoch: int, row: dict) -> None:
        """The E-step: embed, cluster (the service), prototypes on the device; AMI and hierarchy artifacts."""
        cfg, env = self.cfg, self.env
        self.protos, self.check_ids = None, False
        need_e = uses_prototypes(cfg, epoch)
        bank = self.key_bank
        if bank is not None:
            bank.begin_epoch(epoch)  # keys written from now on (this E-step's fill, this epoch's steps) carry it
        t0 = time.perf_counter()
        embedded = None
        if need_e and (bank is None or not self.estep_done):
            embedded = self._embed(model, self.embed_it, head=True, backbone=False, amp_dtype=env.amp_dtype)
            if bank is not None:  # ids no step has trained on yet (all of them after a resume) take these features
                for part_ids, part_feats in gather_objects((embedded["ids"], embedded["head"])):
                    bank.fill_missing(part_ids, part_feats)
        row["time/embed"] = time.perf_counter() - t0
        row["time/cluster"] = row["time/broadcast"] = 0.0
        if need_e:
            if embedded is not None:
                ids, feats = embedded["ids"], embedded["head"]
            else:
                ids, feats = bank.shard()
                ages = bank.ages(epoch)  # 1: trained on in the last epoch; more: a drop_last remainder since
                counts = torch.tensor([int((ages > 1).sum()), ages.numel()], device=env.device)
                stale, total = sum_over_ranks(counts).tolist()
                row["bank/stale_fraction"] = stale / max(total, 1)
            self.estep_done = True
            t1 = time.perf_counter()
            protos, stats = self.service.estep(epoch, env.rank, env.world, ids, feats, device=env.device)
            waited = time.perf_counter() - t1
            row["time/cluster"] = stats.cluster_s
            row["time/broadcast"] = max(waited - stats.total_s, 0.0)  # incl. waiting for the slowest rank
            row.update(stats.as_metrics(prefix="prototypes/"))
            self.protos = protos = protos.to(env.device)
            self.check_ids = stats.num_missing > 0  # ids skipped by the embed stream must not reach the loss
            lm = self.level_map
            if (cfg.eval.ami or cfg.eval.selection_quality) and lm is not None and self.labels_by_id is None \
                    and embedded is not None:
                self.labels_by_id = gather_labels(embedded["ids"], embedded["labels"], len(protos.assignments), lm)
                self.fine_by_id = torch.as_tensor(self.labels_by_id[:, 0], device=env.device)
            if cfg.eval.ami and lm is not None and env.rank == 0 and ami_due(cfg, epoch):  # paper Table 11
                from hierclr.eval.hierarchy_ami import prototype_label_ami

                ami = prototype_label_ami(protos.assignments.cpu().numpy(), self.labels_by_id,
                                          max_samples=cfg.eval.ami_max_samples, seed=cfg.seed)
                row.update({f"prototypes/{k}": v for k, v in ami.items()})  # MLflow's UI: a section after loss
            every = cfg.tracking.hierarchy_every
            if self.tracker is not None and every and (epoch - cfg.loss.warmup_epochs) % every == 0:
                log_hierarchy(self.tracker, protos, f"hierarchy/epoch_{epoch:03d}")
        self.selection = selection_counter(cfg, self.protos, self.fine_by_id)
        self.selection_cache = None
        if self.protos is not None and cfg.method == "hcsc":  # from the queue as it is now (also after a resume)
            t2 = time.perf_counter()
            core = model.module if hasattr(model, "module") else model
            self.selection_cache = self.objective.selection_cache(self.protos, core.queue)
            row["time/selection_cache"] = time.perf_counter() - t2

    def step(self, model, optimizer, batch, views, generator, epoch):
        protos = self.protos
        ids = batch["id"].to(self.env.device)
        if self.check_ids and bool((protos.assignments[ids, 0] < 0).any()):
            bad = ids[protos.assignments[ids, 0] < 0].tolist()
            raise RuntimeError(f"image ids {bad[:5]} were skipped by the E-step's embed stream (undecodable "
                               "there) but decoded in training: they have no prototype assignment")
        return hcsc_train_step(model, self.objective, optimizer, views[0], views[1], ids, protos,
                               local_views=views[2:], generator=generator, amp_dtype=self.env.amp_dtype,
                               selection=self.selection, selection_cache=self.selection_cache,
                               key_bank=self.key_bank)

    def after_train(self) -> dict[str, float]:
        if self.selection is None:
            return {}
        return selection_metrics(sum_over_ranks(self.selection.counts))

    def eval_due(self, epoch: int, last: int) -> bool:
        return self.run.has_val and eval_due(self.cfg.eval.every, epoch, last)

    def evaluate(self, model, epoch: int) -> dict[str, float]:
        """kNN monitor (Eq. 11) on the val split with the query encoder's backbone features."""
        cfg = self.cfg
        amp = autocast_dtype(cfg.eval.feature_precision, self.env.device.type)  # fp32 unless asked otherwise
        train_feats = self._embed(model, self.embed_it, head=False, backbone=True, amp_dtype=amp)
        val_feats = self._embed(model, self.val_it, head=False, backbone=True, amp_dtype=amp)
        return distributed_knn(train_feats, val_feats, ks=cfg.eval.ks, num_classes=self.run.num_classes,
                               temperature=cfg.eval.temperature, precision=cfg.eval.feature_precision)

    def checkpoint_extras(self) -> dict:
        return {"prototypes": self.protos.to("cpu") if self.protos is not None else None}

    def best_record(self, epoch: int, value: float) -> dict:
        return {"epoch": epoch, "knn_top1": value}

    def best_value(self, best: dict | None) -> float | None:
        return best["knn_top1"]

    def save_best(self, core, best: dict) -> None:
        buf = io.BytesIO()
        torch.save({**best, "encoder_q": {k: v.cpu() for k, v in core.encoder_q.state_dict().items()}}, buf)
        resolve(self.run.run_dir).join("best_encoder.pt").write_bytes_atomic(buf.getvalue())

    def epoch_line(self, row: dict[str, float]) -> str:
        """One human-readable progress line per epoch: loss, lr, images/s, kNN top-1 when measured, the epoch's time
        and its E-step's (embed + cluster + broadcast; the full row goes to Ray Train and MLflow)."""
        parts = [f"epoch {int(row['epoch'])}/{self.cfg.optim.epochs - 1}",
                 f"loss {row.get('loss/total', float('nan')):.4f}", f"lr {row['lr']:.4g}",
                 f"{row['train/images_per_s']:.0f} img/s"]
        if "knn/top1_best" in row:
            parts.append(f"kNN top-1 {row['knn/top1_best']:.4f} (k={int(row.get('knn/best_k', 0))})")
        estep = sum(row.get(f"time/{k}", 0.0) for k in ("embed", "cluster", "broadcast"))
        has_estep = uses_prototypes(self.cfg, int(row["epoch"]))
        parts.append(f"{row.get('time/epoch', float('nan')):.1f}s" + (f" (E-step {estep:.1f}s)" if has_estep else ""))
        return "hierclr | " + " | ".join(parts)


# ------------------------------------------------------------------------------------------- driver side
class ContrastivePlan(Plan):
    """The driver side of ``hierclr pretrain``."""

    name = "contrastive"
    method = Contrastive
    config_cls = PretrainConfig
    resume_sections = ("method", "model")
    needs_what = ("resources.num_workers x cpus_per_worker/gpus_per_worker + data.num_cpus + "
                  "service.num_actors x cpus_per_actor/gpus_per_actor (gpu_share: within gpus_per_worker)")

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.service = None

    def worker_gpus(self) -> float:
        """The workers' GPU request, less the share of their GPU the clustering actors take (``service.gpu_share``)."""
        return self.cfg.actor_layout().worker_gpus if self.cfg.uses_clustering else super().worker_gpus()

    def needs(self) -> tuple[float, float]:
        """Train workers, the data streams' budget, and the clustering actors."""
        cfg = self.cfg
        need_cpu, need_gpu = super().needs()
        if cfg.uses_clustering:
            layout = cfg.actor_layout()
            need_cpu += layout.num_actors * layout.actor_cpus
            need_gpu += layout.num_actors * layout.actor_gpus
        return need_cpu, need_gpu

    def check_rows(self, num_rows: int) -> None:
        """Also: at least as many images as the finest level's prototypes (K-means needs a point per centroid)."""
        cfg = self.cfg
        if cfg.uses_clustering:
            need, field = ((cfg.clustering.sizes[0], "clustering.sizes") if cfg.method == "hcsc"
                           else (max(cfg.pcl.num_clusters), "pcl.num_clusters"))
            if num_rows < need:
                raise ValueError(f"data.train ({cfg.data.train}) has {num_rows} images, fewer than the {need} "
                                 f"prototypes asked for ({field})")
        super().check_rows(num_rows)

    def prepare(self, start_epoch: int) -> Prepared:
        from hierclr.data import embed_stream, train_stream
        from hierclr.runtime.runs import stream_config

        cfg = self.cfg
        d = cfg.data
        train_src, val_src = self.open_splits()
        if val_src is not None and val_src.classes and train_src.classes and val_src.classes != train_src.classes:
            raise ValueError(f"data.val ({d.val}) has classes {list(val_src.classes)[:5]}..., different from "
                             f"data.train's {list(train_src.classes)[:5]}...: kNN needs one label space")
        # data.fraction: the train and embed streams read the same ids, which keep their dataset numbers (the
        # E-step's id range stays num_rows; the ids left out get no prototype and never reach a step)
        keep_ids = fraction_ids(train_src, d)
        num_train = train_src.num_rows if keep_ids is None else len(keep_ids)
        scfg = stream_config(cfg)
        streams = {"train": train_stream(train_src, scfg, keep_ids=keep_ids),
                   "embed": embed_stream(train_src, scfg, keep_ids=keep_ids)}
        if val_src is not None:
            streams["val"] = embed_stream(val_src, scfg)
        if not self.rows_checked or keep_ids is not None:  # WebDataset tars (index pass just now), data.fraction
            self.check_rows(num_train)
        part = "" if keep_ids is None else f" of {train_src.num_rows} (data.fraction {d.fraction:g})"
        header = (f"{cfg.method}, {cfg.resources.num_workers} worker(s), {num_train} images{part}, "
                  f"epochs {start_epoch}..{cfg.optim.epochs - 1}")
        run_fields = {"num_classes": len(train_src.classes), "has_val": val_src is not None,
                      "num_rows": train_src.num_rows,
                      "level_map": train_src.level_map().tolist() if train_src.classes else None}
        return Prepared(streams=streams, run_fields=run_fields, tags={"hierclr.method": cfg.method},
                        header=header, train_src=train_src, extras={"num_train": num_train})

    def start_services(self, name: str, prepared: Prepared) -> dict:
        cfg = self.cfg
        if not cfg.uses_clustering:
            return {}
        from hierclr.service import ClusteringService

        self.service = ClusteringService.start(
            f"hierclr-clustering-{name}", cfg.clustering, cfg.service, method=cfg.method,
            pcl_sizes=cfg.pcl.num_clusters, num_rows=prepared.train_src.num_rows,
            num_expected=prepared.extras["num_train"], compat=cfg.compat, layout=cfg.actor_layout())
        return {"service_name": self.service.name}

    def stop_services(self) -> None:
        if self.service is not None:
            self.service.shutdown()

    def final_artifacts(self, tracker, state, run_dir: str, prepared: Prepared, bad: list) -> None:
        """Resolved config, final prototypes, bad-image report, hierarchy views (tree, cluster sizes, chains of
        images), learning curves, and the last and best encoders as MLflow models: the query encoder's ResNet
        trunk (avgpool features), what kNN / linear evaluation and downstream tasks read."""
        import tempfile

        from hierclr.runtime.artifacts import log_chains, log_curves

        cfg = self.cfg
        tracker.log_text(cfg.to_yaml(), "config/resolved.yaml")
        log_curves(tracker, state.history)
        if state.prototypes is not None:
            log_hierarchy(tracker, state.prototypes, "hierarchy/final")
            log_chains(tracker, state.prototypes, prepared.train_src, num_chains=cfg.tracking.chain_grids,
                       seed=cfg.seed)
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
        tracker.log_encoder("encoder_last", model.encoder_q.backbone, example, step=state.epoch)
        best_file = resolve(run_dir).join("best_encoder.pt")
        if best_file.exists():
            best = torch.load(io.BytesIO(best_file.read_bytes()), map_location="cpu", weights_only=True)
            model.encoder_q.load_state_dict(best["encoder_q"])
            tracker.log_encoder("encoder_best", model.encoder_q.backbone, example, step=int(best["epoch"]))
