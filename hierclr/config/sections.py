"""The config sections every training command shares: data, optimiser, resources, checkpoints, tracking.

Pretraining, finetune / hcal and evaluate runs read the same sections, so they share storage, MLflow and
sweeps; each command's schema module adds its own sections beside them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from hierclr.config.loader import Section
from hierclr.data.transforms import TransformConfig
from hierclr.io.mlflow_store import DEFAULT_TRACKING_URI


class DataSection(Section):
    """Where the images are and how the two streams decode and augment them."""

    train: str = Field("builtin://digits/train", description="training shards: path, s3:// or gs:// URI, or builtin://")
    val: str | None = Field("builtin://digits/val", description="labelled split for kNN monitoring; null: none")
    format: Literal["auto", "parquet", "webdataset", "imagefolder"] = "auto"
    hierarchy: str | None = Field(None, description="label hierarchy file (JSON or edge list) for non-parquet data")
    transforms: Literal["imagenet", "imagenet_multicrop", "cifar", "imagenet_linear", "cifar_linear"] = "cifar"
    augment_on: Literal["cpu", "device"] = "cpu"
    decode_batch_size: int = Field(64, ge=1, description="rows decoded and augmented together in one Ray Data task")
    shuffle_buffer: int = Field(1024, ge=0, description="rows in each training worker's local shuffle buffer (Ray "
                                                        "Data local_shuffle_buffer_size), so a batch mixes many decode "
                                                        "slices and shards; 0: off (batches = decode slices)")
    num_cpus: int = Field(1, ge=1, description="CPU budget of each Ray Data stream")
    max_bad_fraction: float = Field(0.001, ge=0.0, le=1.0)
    verify_shards: bool = Field(False, description="check every parquet shard's sha256 against its manifest when "
                                                   "the run starts (reads every byte once); a mismatch names the shard")
    builtin_cache: str = Field("~/.cache/hierclr/builtin", description="where builtin:// datasets are written once")

    def transform_config(self) -> TransformConfig:
        return TransformConfig.preset(self.transforms)

    def with_absolute_paths(self) -> DataSection:
        """A copy with every local path (splits, hierarchy, builtin cache) absolute; URIs unchanged."""
        from hierclr.io.fs import absolute

        return self.model_copy(update={k: absolute(v) for k in ("train", "val", "hierarchy", "builtin_cache")
                                       if (v := getattr(self, k)) is not None})


class TrainDataSection(DataSection):
    """The data of a training run: :class:`DataSection` and the fraction of the training split it trains on."""

    fraction: float = Field(1.0, gt=0, le=1, description="train on this fraction of data.train: a seeded draw of "
                                                         "the same fraction of every class (unlabelled rows as one "
                                                         "more class), the same ids in the train and embed streams; "
                                                         "the prepared shards are read as they are")
    fraction_seed: int = Field(0, description="seed of the data.fraction draw")


class OptimSection(Section):
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


class ResourcesSection(Section):
    """Ray resources. ``address`` None: join ``RAY_ADDRESS`` if set, else start a local Ray. ``profile: local``
    (``--local``) sizes workers, data CPUs and clustering actors to this machine (:mod:`hierclr.config.profiles`)."""

    profile: Literal["fixed", "local"] = Field("fixed", description="fixed: the values below as written; local: "
                                                                    "sized to this machine's CPUs and GPUs when the "
                                                                    "config is loaded (--set of a field still wins)")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    local_num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a locally started Ray")
    address: str | None = None


class CheckpointSection(Section):
    every: int = Field(1, ge=1, description="checkpoint every N epochs (and always after the last)")
    keep: int | None = Field(3, ge=1, description="checkpoints kept (the best by kNN and the latest are extra)")
    storage_path: str = Field("./hierclr_runs", description="Ray Train storage (local dir, s3://, gs://)")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint (-1: forever)")


class TrackingSection(Section):
    enabled: bool = True
    uri: str = Field(DEFAULT_TRACKING_URI, description="MLflow tracking URI (default: embedded local store)")
    experiment: str = "hierclr"
    log_models: bool = Field(True, description="log the best and last encoder as MLflow PyTorch models")
    hierarchy_every: int = Field(1, ge=0, description="log the prototype tree (JSON) and per-level cluster-size "
                                                      "histograms every N E-step epochs (0: only at the end)")
    chain_grids: int = Field(2, ge=0, description="image grids of prototype chains (finest to coarsest) at the end")
