"""The config of ``hierclr pretrain``: HCSC (with the ablation switches of paper Table 5), MoCo v2 and PCL v2.

Loaded by :func:`load_config` through :mod:`hierclr.config.loader` (preset or file, ``base:``, ``--set``).
``compat: official`` (the default) reproduces the authors' code; ``compat: paper`` switches the documented
differences to the paper's reading (see :meth:`PretrainConfig._compat`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hierclr.config.clustering import ActorLayout, ClusteringConfig, ClusteringServiceSection, actor_layout
from hierclr.config.loader import PRESET_DIR, Section, list_presets, load_tree, validate
from hierclr.config.sections import (
    CheckpointSection,
    OptimSection,
    ResourcesSection,
    TrackingSection,
    TrainDataSection,
)
from hierclr.eval.precision import FeaturePrecision

Method = Literal["hcsc", "moco", "pcl"]

# compat: paper -> these values, unless the file or an override sets them (paper Eq. 6, Sec. 5.1)
PAPER_COMPAT = {"loss": {"negative_drop": "remove", "instance_level_reduction": "mean"},
                "clustering": {"min_cluster_size": 10}}


class ModelConfig(Section):
    backbone: Literal["resnet10", "resnet18", "resnet50"] = "resnet50"
    cifar_stem: bool = False
    dim: int = Field(128, ge=1)
    hidden_dim: int | None = Field(None, ge=1)
    queue_size: int = Field(16384, ge=1)
    momentum: float = Field(0.999, ge=0.0, le=1.0)
    embed_buffers: Literal["rank0", "per_rank"] = Field(
        "rank0", description="BatchNorm statistics of the E-step and kNN-monitor embeddings: rank0 = rank 0's, "
                             "broadcast to every rank before each embedding pass (the official code: DDP broadcasts "
                             "buffers at every forward); per_rank = each rank's own (training uses "
                             "broadcast_buffers=False)")


class HCSCLossConfig(Section):
    """The HCSC objective: loss options and the ablation switches of paper Table 5."""

    temperature: float = Field(0.2, gt=0, description="instance temperature T")
    negative_drop: Literal["zero", "remove"] = "zero"
    instance_level_reduction: Literal["sum", "mean"] = "sum"
    warmup_epochs: int = Field(20, ge=0, description="epochs of plain InfoNCE before clustering starts")
    hierarchical_prototypes: bool = Field(True, description="HP: all levels (False: level 0 only)")
    instance_loss: bool = Field(True, description="IL")
    prototype_loss: bool = Field(True, description="PL")
    instance_selection: bool = Field(True, description="IS")
    prototype_selection: bool = Field(True, description="PS")
    selection_on_local: bool = Field(True, description="multi-crop: local views reuse the instance masks")

    @model_validator(mode="after")
    def _some_loss(self) -> HCSCLossConfig:
        if not (self.instance_loss or self.prototype_loss):
            raise ValueError("instance_loss and prototype_loss are both off: the objective would be empty")
        return self


class PCLSection(Section):
    """PCL v2 baseline (``method: pcl``): flat K-means at several granularities, ProtoNCE."""

    num_clusters: tuple[int, ...] = (25000, 50000, 100000)
    num_negatives: int | None = Field(16384, ge=1, description="prototype negatives sampled per clustering")

    @field_validator("num_clusters")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"pcl.num_clusters must be positive integers, got {list(v)}")
        return v


class EvalSection(Section):
    every: int = Field(1, ge=0, description="kNN on the val split every N epochs (0: only at the end); always at the end")
    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = Field(0.07, gt=0)
    ami: bool = Field(True, description="AMI of the prototype assignments against every label level, per E-step "
                                        "(paper Table 11), when the training split has labels")
    ami_every: int = Field(1, ge=1, description="AMI every N E-step epochs (and at the last epoch): the full AMI "
                                                "costs minutes per pair at ImageNet scale, on rank 0")
    ami_max_samples: int | None = Field(None, ge=100, description="null (default): AMI over every row, as the paper "
                                                                  "reports; N: a seeded N-row subsample, faster but "
                                                                  "biased low")
    feature_precision: FeaturePrecision = Field("fp32", description="kNN monitor features: fp32 (default), or "
                                                                    "bf16 / fp16 autocast on GPUs and shipped "
                                                                    "across ranks in that precision")
    selection_quality: bool = Field(True, description="precision / recall of the false negatives ICSC drops per "
                                                      "level, per epoch (paper Fig. 5), when the training split has "
                                                      "labels")


class PretrainConfig(Section):
    """Everything ``hierclr pretrain`` needs. ``method``: ``hcsc`` (with the Table 5 switches in
    ``loss``), ``moco`` (MoCo v2, no clustering) or ``pcl`` (PCL v2, flat multi-K ProtoNCE)."""

    name: str = Field("hierclr", description="run name: Ray Train run directory and MLflow run name")
    method: Method = "hcsc"
    compat: Literal["official", "paper"] = "official"
    seed: int = 0
    data: TrainDataSection = TrainDataSection()
    model: ModelConfig = ModelConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    service: ClusteringServiceSection = ClusteringServiceSection()
    loss: HCSCLossConfig = HCSCLossConfig()
    pcl: PCLSection = PCLSection()
    optim: OptimSection = OptimSection()
    resources: ResourcesSection = ResourcesSection()
    checkpoint: CheckpointSection = CheckpointSection()
    tracking: TrackingSection = TrackingSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, tree: Any) -> Any:
        """``compat: paper``: remove dropped negatives, mean over instance levels (Eq. 6), drop clusters under
        10 images (Sec. 5.1); values given explicitly win. The one place the rule is coded."""
        if not isinstance(tree, dict) or tree.get("compat") != "paper":
            return tree
        tree = dict(tree)
        for section, values in PAPER_COMPAT.items():
            given = tree.get(section) or {}
            given = given.model_dump() if hasattr(given, "model_dump") else dict(given)
            tree[section] = {**values, **given}
        return tree

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        world = self.resources.num_workers
        if self.optim.batch_size % world:
            raise ValueError(f"optim.batch_size ({self.optim.batch_size}) must be divisible by "
                             f"resources.num_workers ({world})")
        if self.model.queue_size % self.optim.batch_size:
            raise ValueError(f"model.queue_size ({self.model.queue_size}) must be a multiple of the global batch "
                             f"optim.batch_size ({self.optim.batch_size}) (MoCo queue invariant)")
        if self.data.transform_config().train.global_views < 2:
            raise ValueError(f"data.transforms={self.data.transforms} gives one view per image; contrastive "
                             "pretraining needs two (the *_linear presets are for evaluation runs)")
        if self.method == "hcsc" and self.loss.warmup_epochs >= self.optim.epochs:
            pass  # legal (all warm-up = MoCo v2) but worth knowing; the trainer logs it
        if self.uses_clustering:
            self.actor_layout()  # service x resources combinations Ray could never schedule fail here
        return self

    def actor_layout(self) -> ActorLayout:
        """The clustering actors' count and Ray options and the Train workers' GPU request
        (:func:`hierclr.config.clustering.actor_layout`)."""
        return actor_layout(self.service, self.resources)

    @property
    def uses_clustering(self) -> bool:
        return self.method in ("hcsc", "pcl")


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Preset name or YAML path (None: all defaults) + ``key=value`` overrides -> validated config."""
    return validate(PretrainConfig, load_tree(source, overrides, services=True), source)


__all__ = ["PRESET_DIR", "ClusteringConfig", "ClusteringServiceSection", "EvalSection", "HCSCLossConfig", "Method",
           "ModelConfig", "PCLSection", "PretrainConfig", "list_presets", "load_config"]
