"""The config of the supervised modes: ``hierclr finetune`` (CE, SupCon, CLCE, VarCon) and ``hierclr hcal``.

Same shape and loading rules as the pretraining config (:mod:`hierclr.config.loader`): a preset
(``hierclr/presets/supervised/<name>.yaml``) or YAML file, ``--set a.b=value`` overrides, one pydantic
validation that names the bad field before Ray starts. The data, optimiser, resources, checkpoint and
tracking sections are the pretraining ones, so runs of both kinds share storage, MLflow and sweeps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hierclr.config.loader import SUPERVISED_PRESET_DIR, Section, list_presets, load_tree, validate
from hierclr.config.sections import (
    CheckpointSection,
    OptimSection,
    ResourcesSection,
    TrackingSection,
    TrainDataSection,
)

Task = Literal["finetune", "hcal"]
LossName = Literal["ce", "supcon", "clce", "varcon"]


class SupervisedModelSection(Section):
    """The network: a ResNet trunk, a projection head for the contrastive losses, a linear classifier.

    ``init``: where the trunk's starting weights come from: ``null`` (random), a torchvision ResNet state
    dict file, a hierclr pretraining checkpoint / run directory / ``best_encoder.pt``, or an official
    HCSC / PCL / MoCo checkpoint (``module.encoder_q.*``); see :func:`hierclr.models.loading.load_backbone`."""

    backbone: Literal["resnet10", "resnet18", "resnet50"] = "resnet18"
    cifar_stem: bool = False
    init: str | None = Field(None, description="trunk weights: torchvision state dict, hierclr checkpoint/run dir, "
                                               "official MoCo-style checkpoint, or mlflow:<run id>[/<model>] "
                                               "(default model encoder_last; read from tracking.uri); null: random")
    init_head: bool = Field(False, description="also take the projection head from a hierclr pretraining "
                                               "checkpoint (its MoCo head: needs matching dim / hidden_dim)")
    dim: int = Field(128, ge=1, description="projection (embedding) dimension of the contrastive losses")
    hidden_dim: int | None = Field(None, ge=1, description="projection MLP hidden width (null: the trunk's width)")
    freeze_backbone: bool = Field(False, description="linear evaluation: the trunk is frozen and kept in eval mode "
                                                     "(BatchNorm statistics fixed); only the heads train")
    classifier_init_std: float | None = Field(None, gt=0, description="classifier weights ~ N(0, std^2), bias 0 "
                                                                      "(linear protocol: 0.01); null: PyTorch's")
    sync_bn: bool = Field(False, description="SyncBatchNorm: batch statistics over all workers' rows (GPU workers)")


class SupervisedLossSection(Section):
    """``finetune``'s objective. ``ce``: cross-entropy of the classifier. ``supcon`` (Khosla et al. 2020) and
    ``varcon`` (spec: VarCon) train the embedding; their classifier is an online linear probe on detached
    trunk features (solo-learn style), so accuracy is reported for every loss. ``clce`` =
    ``(1 - lam) CE + lam LACLN`` (CLCE Eq. 1-3), both terms training the trunk."""

    name: LossName = "ce"
    temperature: float | None = Field(None, gt=0, description="SupCon / LACLN tau (null: 0.1 SupCon, 0.5 CLCE)")
    lam: float = Field(0.9, ge=0, le=1, description="CLCE lambda")
    form: Literal["inside", "outside"] = Field("inside", description="LACLN: 1/|P| inside the log (Eq. 3 as printed) "
                                                                      "or outside (SupCon style)")
    tau1: float = Field(0.1, gt=0, description="VarCon base temperature")
    epsilon: float = Field(0.02, ge=0, description="VarCon adaptive-temperature range")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    clce_features: Literal["encoder", "projection"] = Field(
        "encoder", description="what LACLN reads: the L2-normalised encoder (trunk) output, as the CLCE paper "
                               "(Sec. 3.3), or a projection head's output")
    ddp_scale: Literal["official", "world_size"] = Field(
        "official", description="contrastive losses under DDP (every rank computes the loss of the all-gathered "
                                "batch): official = unscaled, as the VarCon code (DDP's gradient average then gives "
                                "1/world of the global loss's gradient); world_size = x world, the global loss's "
                                "exact gradient (an official-equivalent step needs lr / world)")

    @model_validator(mode="after")
    def _tau(self) -> SupervisedLossSection:
        if self.name == "varcon" and self.epsilon >= self.tau1:
            raise ValueError(f"loss.epsilon ({self.epsilon}) must be below loss.tau1 ({self.tau1}): tau2 ranges over "
                             "[tau1 - epsilon, tau1 + epsilon]")
        return self

    @property
    def uses_projection(self) -> bool:
        """Whether the loss reads a projection head (CE never does; CLCE only with ``clce_features=projection``)."""
        return self.name in ("supcon", "varcon") or (self.name == "clce" and self.clce_features == "projection")

    def contrastive_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.5 if self.name == "clce" else 0.1


class HCALSection(Section):
    """HCAL (spec: HCAL): level features, one learnable prototype per class per level, per-level InfoNCE,
    bottom-up aggregation, adaptive level weights. Levels are hierclr's (0 = finest = paper level 1)."""

    feat_dim: int = Field(256, ge=1, description="d of the level features (paper: 256)")
    hidden_dim: int | None = Field(None, ge=1, description="projection MLP hidden width (null: one Linear layer)")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature (the paper does not give it)")
    perturbation: float = Field(0.05, ge=0, description="epsilon: std of the Gaussian noise on prototypes in training")
    gamma: float = Field(0.5, gt=0, description="softmax temperature of the adaptive level weights")
    aggregate: bool = Field(True, description="bottom-up feature aggregation (ablation: false)")
    adaptive: bool = Field(True, description="adaptive level weights (ablation: false = uniform)")
    prototype_lr: float = Field(0.05, gt=0, description="lr of level-0 prototypes; level l gets this x factor^l")
    prototype_lr_factor: float = Field(2.0, gt=0)
    readout: Literal["independent", "bottom_up"] = Field(
        "independent", description="predictions: nearest prototype at every level, or level 0 and its ancestors")
    init_prototypes: Literal["random", "class_means", "centered_class_means"] = Field(
        "random", description="class_means: level-0 prototypes from the class means of the training embeddings "
                              "under the initial network, parents from their children (use with model.init = an "
                              "HCSC run and model.init_head); centered_class_means: the same after subtracting the "
                              "mean of the class means (contrastive embeddings sit in a narrow cone: measured mean "
                              "cosine 0.999 between raw class means on the digits)")


class SupervisedOptimSection(OptimSection):
    """SGD, cosine per epoch after ``warmup_epochs`` of linear warm-up; lr = base_lr * batch / 256 for the
    trunk and heads (HCAL prototypes: :class:`HCALSection` lrs, on the same schedule)."""

    schedule: Literal["cosine", "constant", "step"] = "cosine"
    milestones: tuple[int, ...] = Field((), description="step schedule: epochs at which the lr is multiplied by "
                                                        "step_gamma (linear protocol: 60, 80)")
    step_gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    head_lr_scale: float = Field(1.0, gt=0, description="lr of the heads (projection, classifier) / trunk lr")

    @model_validator(mode="after")
    def _milestones(self) -> SupervisedOptimSection:
        if self.schedule == "step":
            m = self.milestones
            if not m or list(m) != sorted(set(m)) or m[0] < 1 or m[-1] >= self.epochs:
                raise ValueError(f"optim.milestones must be increasing epochs in 1..{self.epochs - 1} for the step "
                                 f"schedule, got {list(m)}")
        return self


class SubsetSection(Section):
    """Train on a label subset (semi-supervised protocol): the files named in ``file_list`` (the standard
    ImageNet ``1percent.txt`` / ``10percent.txt``: one file name per line, matched against the split's file
    paths, parquet or ImageFolder data), ``fraction`` of every class, seeded (one extra read pass over the
    training split's labels), or the dataset ids in ``ids_file`` (a ``.npy``)."""

    file_list: str | None = Field(None, description="a file list such as ImageNet's 1percent.txt")
    fraction: float | None = Field(None, gt=0, le=1)
    ids_file: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _one(self) -> SubsetSection:
        given = [k for k in ("file_list", "fraction", "ids_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"subset: give one of file_list, fraction, ids_file, not {' and '.join(given)}")
        return self

    @property
    def active(self) -> bool:
        return self.fraction is not None or self.ids_file is not None or self.file_list is not None


class SupervisedEvalSection(Section):
    every: int = Field(1, ge=0, description="evaluate on the val split every N epochs (0: only at the end)")
    select: str | None = Field(None, description="metric that picks the best checkpoint (default acc/top1 for "
                                                 "finetune, acc/level0 for hcal)")


class SupervisedConfig(Section):
    """Everything ``hierclr finetune`` / ``hierclr hcal`` need."""

    name: str = "hierclr-supervised"
    task: Task = "finetune"
    seed: int = 0
    data: TrainDataSection = TrainDataSection()
    model: SupervisedModelSection = SupervisedModelSection()
    loss: SupervisedLossSection = SupervisedLossSection()
    hcal: HCALSection = HCALSection()
    subset: SubsetSection = SubsetSection()
    optim: SupervisedOptimSection = SupervisedOptimSection(epochs=100, base_lr=0.1)
    resources: ResourcesSection = ResourcesSection()
    checkpoint: CheckpointSection = CheckpointSection()
    tracking: TrackingSection = TrackingSection()
    eval: SupervisedEvalSection = SupervisedEvalSection()

    @field_validator("data")
    @classmethod
    def _needs_val(cls, v: TrainDataSection) -> TrainDataSection:
        if v.val is None:
            raise ValueError("data.val is required: supervised runs report accuracy on a labelled val split")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SupervisedConfig:
        if self.optim.batch_size % self.resources.num_workers:
            raise ValueError(f"optim.batch_size ({self.optim.batch_size}) must be divisible by "
                             f"resources.num_workers ({self.resources.num_workers})")
        if self.optim.warmup_epochs >= self.optim.epochs > 1:
            raise ValueError(f"optim.warmup_epochs ({self.optim.warmup_epochs}) must be below optim.epochs "
                             f"({self.optim.epochs})")
        if self.subset.active and self.data.fraction < 1:
            raise ValueError(f"data.fraction ({self.data.fraction}) and subset.* both choose the training rows: give "
                             "one (subset.fraction draws a label subset the same way)")
        if self.model.sync_bn and not self.resources.use_gpu:
            raise ValueError("model.sync_bn needs GPU workers (resources.use_gpu=true): torch's SyncBatchNorm does "
                             "not run on the CPU")
        if self.model.init_head and not self.model.init:
            raise ValueError("model.init_head needs model.init (a hierclr pretraining checkpoint)")
        if self.model.init_head and self.task == "finetune" and not self.loss.uses_projection:
            raise ValueError(f"model.init_head: loss.name={self.loss.name} has no projection head to initialise"
                             + (" (set loss.clce_features=projection)" if self.loss.name == "clce" else ""))
        if self.task == "hcal" and self.hcal.init_prototypes != "random" and not self.model.init:
            raise ValueError(f"hcal.init_prototypes={self.hcal.init_prototypes} needs model.init: class means of a "
                             "random network carry no information")
        return self

    @property
    def method(self) -> str:
        """The label MLflow and the sweep table show: ``hcal`` or the finetune loss."""
        return "hcal" if self.task == "hcal" else self.loss.name

    @property
    def select_metric(self) -> str:
        return self.eval.select or ("acc/level0" if self.task == "hcal" else "acc/top1")


def list_supervised_presets() -> list[str]:
    return list_presets(SUPERVISED_PRESET_DIR)


def supervised_tree(source: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    return load_tree(source, overrides, SUPERVISED_PRESET_DIR)


def validate_supervised(tree: dict, where=None) -> SupervisedConfig:
    return validate(SupervisedConfig, tree, where)


def load_supervised_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                           task: Task | None = None) -> SupervisedConfig:
    """Preset name (``hierclr/presets/supervised``) or YAML path + ``key=value`` overrides -> validated config.
    ``task`` (from the subcommand) wins over the file's and is an error when the file says otherwise."""
    tree = supervised_tree(source, overrides)
    if task is not None:
        if tree.get("task", task) != task:
            raise ValueError(f"config {source}: task is {tree['task']!r}, but this is `hierclr {task}`")
        tree["task"] = task
    return validate_supervised(tree, source)
