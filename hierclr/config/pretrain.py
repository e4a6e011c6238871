"""The pretraining config: one typed, validated tree, loaded from a preset or YAML file plus dotted overrides.

``hierclr pretrain --config cifar100-r18 --set optim.epochs=10 --set clustering.sizes=[100,50]``:
the preset (``hierclr/presets/<name>.yaml``) or a YAML file is read, each ``--set`` replaces one leaf
(its value parsed as YAML), then pydantic validates the whole tree; a bad value fails here, naming the
field, before Ray starts.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hierclr.config.sections_math import ClusteringConfig, HCSCLossConfig, ModelConfig
from hierclr.data.transforms import TransformConfig

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
Method = Literal["hcsc", "moco", "pcl"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataSection(_Section):
    """Where the images are and how the two streams decode and augment them."""

    train: str = Field("builtin://digits/train", description="training shards: path, s3:// or gs:// URI, or builtin://")
    val: str | None = Field("builtin://digits/val", description="labelled split for kNN monitoring; null: none")
    format: Literal["auto", "parquet", "webdataset", "imagefolder"] = "auto"
    hierarchy: str | None = Field(None, description="label hierarchy file (JSON or edge list) for non-parquet data")
    transforms: Literal["imagenet", "imagenet_multicrop", "cifar", "imagenet_linear", "cifar_linear"] = "cifar"
    augment_on: Literal["cpu", "device"] = "cpu"
    decode_batch_size: int = Field(64, ge=1, description="rows decoded and augmented together in one Ray Data task")
    num_cpus: int = Field(1, ge=1, description="CPU budget of each Ray Data stream")
    max_bad_fraction: float = Field(0.001, ge=0.0, le=1.0)
    builtin_cache: str = Field("~/.cache/hierclr/builtin", description="where builtin:// datasets are written once")

    def transform_config(self) -> TransformConfig:
        return TransformConfig.preset(self.transforms)


class PCLSection(_Section):
    """PCL v2 baseline (``method: pcl``): flat K-means at several granularities, ProtoNCE."""

    num_clusters: tuple[int, ...] = (25000, 50000, 100000)
    num_negatives: int | None = Field(16384, ge=1, description="prototype negatives sampled per clustering")

    @field_validator("num_clusters")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"pcl.num_clusters must be positive integers, got {list(v)}")
        return v


class OptimSection(_Section):
    """SGD with a per-epoch cosine schedule; ``lr = base_lr * global_batch / 256`` (linear scaling)."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1, description="global batch (split equally across workers)")
    base_lr: float = Field(0.03, gt=0, description="lr for a global batch of 256")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    amp: bool = Field(False, description="bf16 autocast on GPUs (off: exact fp32 reproduction)")
    channels_last: bool = Field(False, description="channels_last memory format on GPUs")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


class ClusteringServiceSection(_Section):
    """The Ray actor pool that runs the E-step's K-means."""

    num_actors: int = Field(1, ge=1, description=">1: level-0 K-means as distributed Lloyd over the actors")
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="0: CPU actors (faiss CPU); >0 and GPUs present: GPU")
    max_restarts: int = Field(1, ge=0, description="restarts of a failed actor; the E-step is retried once")


class ResourcesSection(_Section):
    """Ray resources. ``address`` None: join ``RAY_ADDRESS`` if set, else start a local Ray."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    local_num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a locally started Ray")
    address: str | None = None


class CheckpointSection(_Section):
    every: int = Field(1, ge=1, description="checkpoint every N epochs (and always after the last)")
    keep: int | None = Field(3, ge=1, description="checkpoints kept (the best by kNN and the latest are extra)")
    storage_path: str = Field("./hierclr_runs", description="Ray Train storage (local dir, s3://, gs://)")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint (-1: forever)")


class TrackingSection(_Section):
    enabled: bool = True
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (default: embedded local store)")
    experiment: str = "hierclr"
    log_models: bool = Field(True, description="log the best and last encoder as MLflow PyTorch models")
    hierarchy_every: int = Field(1, ge=0, description="log the prototype tree (JSON) and per-level cluster-size "
                                                      "histograms every N E-step epochs (0: only at the end)")
    chain_grids: int = Field(2, ge=0, description="image grids of prototype chains (finest to coarsest) at the end")


class EvalSection(_Section):
    every: int = Field(1, ge=0, description="kNN on the val split every N epochs (0: never); always at the end")
    ks: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = Field(0.07, gt=0)
    ami: bool = Field(True, description="AMI of the prototype assignments against every label level, per E-step "
                                        "(paper Table 11), when the training split has labels")
    ami_max_samples: int | None = Field(50_000, ge=100, description="seeded subsample for AMI (sklearn's expected "
                                                                    "mutual information is slow at ImageNet scale)")
    selection_quality: bool = Field(True, description="precision / recall of the false negatives ICSC drops per "
                                                      "level, per epoch (paper Fig. 5), when the training split has "
                                                      "labels")


class PretrainConfig(_Section):
    """Everything ``hierclr pretrain`` needs. ``method``: ``hcsc`` (with the Table 5 switches in
    ``loss``), ``moco`` (MoCo v2, no clustering) or ``pcl`` (PCL v2, flat multi-K ProtoNCE)."""

    name: str = Field("hierclr", description="run name: Ray Train run directory and MLflow run name")
    method: Method = "hcsc"
    compat: Literal["official", "paper"] = "official"
    seed: int = 0
    data: DataSection = DataSection()
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
        return self

    @property
    def uses_clustering(self) -> bool:
        return self.method in ("hcsc", "pcl")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ------------------------------------------------------------------------------------------- loading
def list_presets(preset_dir: Path = PRESET_DIR) -> list[str]:
    return sorted(p.stem for p in preset_dir.glob("*.yaml"))


def _read_yaml(source: str | Path, preset_dir: Path = PRESET_DIR) -> dict:
    path = Path(source)
    if not path.suffix and (preset_dir / f"{source}.yaml").is_file():
        path = preset_dir / f"{source}.yaml"
    if not path.is_file():
        raise ValueError(f"config {str(source)!r} is neither a file nor a preset (presets: "
                         f"{', '.join(list_presets(preset_dir))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: the top level must be a mapping, got {type(data).__name__}")  # noqa: TRY004  user input
    base = data.pop("base", None)  # presets may extend another preset
    if base is not None:
        return _merge(_read_yaml(base, preset_dir), data)
    return data


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(tree: dict, assignment: str) -> dict:
    """``a.b.c=value`` -> ``tree['a']['b']['c'] = yaml(value)``; unknown keys are caught by validation."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from None
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {p!r} is a value, not a section")  # noqa: TRY004  user input
        node = child
    node[parts[-1]] = value
    return tree


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Preset name or YAML path (None: all defaults) + ``key=value`` overrides -> validated config.

    ``compat: paper`` switches the documented differences (see :meth:`hierclr.config.sections_math.HCSCConfig.preset`)
    unless the file or an override sets them explicitly."""
    tree = _read_yaml(source) if source is not None else {}
    for o in overrides:
        apply_override(tree, o)
    if tree.get("compat") == "paper":
        tree["loss"] = {"negative_drop": "remove", "instance_level_reduction": "mean", **(tree.get("loss") or {})}
        tree["clustering"] = {"min_cluster_size": 10, **(tree.get("clustering") or {})}
    try:
        return PretrainConfig.model_validate(tree)
    except ValidationError as e:
        raise ValueError(_describe(e, source)) from None


def _describe(e: ValidationError, source) -> str:
    lines = [f"invalid config{f' {source}' if source else ''}:"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and not isinstance(
            err["input"], dict) else ""))
    return "\n".join(lines)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``; lists and tuples stay values (MLflow params are flat)."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json")
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out
