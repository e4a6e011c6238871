"""The two streams the trainer reads: ``train`` (shuffled, augmented views) and ``embed`` (eval
transform, deterministic order), built on :class:`~hierclr.data.source.ShardSource` with Ray Data.

Randomness is per row: the crops and photometric parameters of image ``id`` in epoch ``e`` come from
``np.random.default_rng([seed, e, id, stage])``, so they do not depend on how rows meet in batches,
on the number of CPU tasks, or on whether colour ops run in a CPU task or on the trainer's GPU
(``augment_on="device"``: the CPU ships uint8 crops, :func:`finish_views` does the rest on device).
The epoch of a CPU task is the dataset's execution count (Ray increments it per pass) plus
``epoch_offset`` set with :meth:`ImageStream.set_epoch_offset` when a run resumes.
"""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from hierclr.data.bad_images import BadImage, BadImageBudget
from hierclr.data.decode import CorruptImageError, decode_rgb
from hierclr.data.epoch_clock import EpochClock
from hierclr.data.source import ShardSource, read_units
from hierclr.data.transforms import (
    AugmentConfig,
    MultiViewAugment,
    PhotometricParams,
    TransformConfig,
    apply_photometric,
    eval_transform,
    sample_photometric_params,
)
from hierclr.runtime.ray_start import OWN_RESOURCES

EPOCH_OFFSET_KEY = "hierclr.epoch_offset"
EPOCH_CLOCK_KEY = "hierclr.epoch_clock"
CROP_STAGE, PHOTOMETRIC_STAGE = 0, 1
SHUFFLE_STAGE = 3  # the local shuffle buffer's seed (2: the in-slice permutation)


class StreamConfig(BaseModel):
    """How the streams decode and augment (transform values themselves are in ``transforms``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transforms: TransformConfig = TransformConfig()
    batch_size: int = Field(64, ge=1, description="rows decoded and augmented together inside a read task")
    num_cpus: int = Field(1, ge=1, description="CPU budget of the Ray Data pipeline (tasks run in parallel up to it)")
    augment_on: Literal["cpu", "device"] = Field(
        "cpu", description="cpu: full augmentation in Ray Data tasks; device: CPU crops, colour ops on the worker")
    seed: int = 0
    shuffle: bool = True
    max_bad_fraction: float = Field(0.001, ge=0.0, le=1.0, description="undecodable images tolerated, per dataset")


def row_rng(seed: int, epoch: int, row_id: int, stage: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, int(row_id), stage])


def row_generator(seed: int, epoch: int, row_id: int) -> torch.Generator:
    rng = row_rng(seed, epoch, row_id, PHOTOMETRIC_STAGE)
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def stream_epoch() -> int:
    """The epoch a Ray Data task belongs to: the trainer's epoch clock when the stream has one (exact
    across worker-group restarts), else executions of its dataset so far + the resume offset."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    clock = ctx.get_config(EPOCH_CLOCK_KEY, None)
    if clock:
        import ray

        return int(ray.get(_clock_handle(clock).get.remote()))
    return int(ctx.get_config(EPOCH_OFFSET_KEY, 0)) + int(getattr(ctx, "_execution_idx", 0))


_CLOCKS: dict[str, object] = {}


def _clock_handle(name: str):
    import ray

    if name not in _CLOCKS:
        _CLOCKS[name] = ray.get_actor(name)
    return _CLOCKS[name]


def start_epoch_clock(name: str, epoch: int = 0):
    """A named :class:`EpochClock` actor (0 CPUs) that :meth:`ImageStream.use_epoch_clock` can follow."""
    import ray

    return ray.remote(num_cpus=0)(EpochClock).options(name=name, scheduling_strategy=OWN_RESOURCES).remote(epoch)


def row_photometric_params(ids, num_views: int, cfg: AugmentConfig, seed: int, epoch: int) -> list[PhotometricParams]:
    """Per view, the stacked per-row parameters (each row drawn from its own generator)."""
    per_row = [sample_photometric_params(num_views, cfg, row_generator(seed, epoch, i), "cpu") for i in ids]
    names = [f.name for f in dataclasses.fields(PhotometricParams)]
    return [PhotometricParams(**{n: torch.stack([getattr(p, n)[v] for p in per_row]) for n in names})
            for v in range(num_views)]


def finish_views(batch: dict, transforms: TransformConfig, *, augment_on: str, device="cpu", seed: int = 0,
                 epoch: int | None = None, num_views: int | None = None) -> list[torch.Tensor]:
    """The model's float inputs from a train batch: normalise CPU-augmented uint8 views, or (with
    ``augment_on="device"``) apply the per-row photometric ops to the shipped crops on ``device`` first."""
    aug = MultiViewAugment(transforms.train)
    v = num_views or aug.num_views
    views = [torch.as_tensor(batch[f"view{i}"]).to(device, non_blocking=True) for i in range(v)]
    if augment_on == "cpu":
        return [aug.normalize(x.float() / 255.0) for x in views]
    if epoch is None:
        raise ValueError("augment_on='device' needs the epoch, which seeds the per-row photometric parameters")
    ids = torch.as_tensor(batch["id"]).tolist()
    params = row_photometric_params(ids, v, transforms.train, seed, epoch)
    return [aug.normalize(apply_photometric(x, p.to(x.device), transforms.train))
            for x, p in zip(views, params)]


def _decode_rows(batch: dict, ledger) -> tuple[list[int], list[torch.Tensor]]:
    keep, images, bad = [], [], []
    for i, data in enumerate(batch["image"]):
        try:
            images.append(decode_rgb(data))
            keep.append(i)
        except CorruptImageError as e:
            bad.append(BadImage(int(batch["id"][i]), str(batch["shard"][i]), str(e)))
    if bad:
        import ray

        ray.get(ledger.record.remote(bad))  # raises TooManyBadImagesError past the budget
    return keep, images


def _meta(batch: dict, keep: list[int]) -> dict:
    return {"id": np.asarray(batch["id"])[keep], "label": np.asarray(batch["label"])[keep],
            "labels": np.asarray(batch["labels"])[keep].reshape(len(keep), -1)}


def _train_task(batch: dict, *, transforms: TransformConfig, augment_on: str, seed: int, ledger) -> dict:
    torch.set_num_threads(1)
    epoch = stream_epoch()
    keep, images = _decode_rows(batch, ledger)
    out = _meta(batch, keep)
    aug = MultiViewAugment(transforms.train)
    perm = row_rng(seed, epoch, int(out["id"][0]) if len(keep) else 0, 2).permutation(len(keep))
    out = {k: v[perm] for k, v in out.items()}  # in-batch shuffle (cheap; block order is shuffled per epoch too)
    images = [images[i] for i in perm]
    crops = [aug.crop(img, row_rng(seed, epoch, i, CROP_STAGE)) for img, i in zip(images, out["id"])]
    params = row_photometric_params(out["id"], aug.num_views, transforms.train, seed, epoch) if augment_on == "cpu" else None
    for v, size in enumerate(aug.view_sizes):
        x = torch.stack([c[v] for c in crops]) if crops else torch.zeros(0, 3, size, size, dtype=torch.uint8)
        if params is not None and len(crops):
            x = aug.to_uint8(apply_photometric(x, params[v], transforms.train))
        out[f"view{v}"] = x.numpy()
    return out


def _embed_task(batch: dict, *, transforms: TransformConfig, ledger) -> dict:
    torch.set_num_threads(1)
    keep, images = _decode_rows(batch, ledger)
    out = _meta(batch, keep)
    c = transforms.eval.crop
    x = torch.stack([eval_transform(img, transforms.eval) for img in images]) if images else torch.zeros(0, 3, c, c)
    out["image"] = x.to(torch.uint8).numpy()
    return out


@dataclass(eq=False)
class ImageStream:
    """A stream of batches for the trainer, with its bad-image ledger and how to split it."""

    kind: Literal["train", "embed"]
    dataset: object  # ray.data.Dataset
    source: ShardSource
    config: StreamConfig
    ledger: object = field(repr=False)  # Ray actor handle holding a BadImageBudget

    @property
    def view_names(self) -> tuple[str, ...]:
        if self.kind == "embed":
            return ("image",)
        return tuple(f"view{i}" for i in range(MultiViewAugment(self.config.transforms.train).num_views))

    def bad_images(self) -> list[BadImage]:
        import ray

        return ray.get(self.ledger.report.remote())

    def set_epoch_offset(self, epoch: int) -> None:
        """Continue the per-epoch seeds at ``epoch`` (a resumed run sees the augmentations it would have)."""
        self.dataset.context.set_config(EPOCH_OFFSET_KEY, int(epoch))

    def use_epoch_clock(self, name: str) -> None:
        """Take the epoch of every task from the named :class:`EpochClock` (see :func:`start_epoch_clock`)."""
        self.dataset.context.set_config(EPOCH_CLOCK_KEY, name)

    def split(self, n: int):
        """``n`` iterators for ``n`` workers: train rows are split equally (DDP needs equal step counts;
        up to n-1 rows are left out per epoch); embed rows are all kept, each exactly once."""
        return self.dataset.streaming_split(n, equal=self.kind == "train")


def _ledger(source: ShardSource, cfg: StreamConfig, kind: str, keep_ids: np.ndarray | None = None):
    """The stream's bad-image budget: a fraction of the rows it reads (``keep_ids``: only those)."""
    import ray

    actor = ray.remote(num_cpus=0)(BadImageBudget)
    return actor.options(name=f"hierclr-bad-images-{kind}-{uuid.uuid4().hex[:8]}",
                         scheduling_strategy=OWN_RESOURCES).remote(
        source.num_rows if keep_ids is None else len(keep_ids), cfg.max_bad_fraction, source.uri)


def _kept(keep_ids) -> np.ndarray | None:
    return None if keep_ids is None else np.unique(np.asarray(keep_ids, np.int64))


def _budget(ds, cfg: StreamConfig):
    """Give the pipeline exactly ``cfg.num_cpus`` CPUs. Ray Data's per-operator resource reservation is
    switched off on this dataset: with one fused operator it only held back half the budget (measured: a
    2-CPU budget ran one task at a time; benchmarks/input_pipeline.py)."""
    from ray.data import ExecutionResources

    ds.context.execution_options.resource_limits = ExecutionResources(cpu=cfg.num_cpus)
    ds.context.op_resource_reservation_enabled = False
    return ds


def _per_unit(task):
    """One Ray task per read unit: read it, then run ``task`` on ``batch_size`` slices, yielding each.

    Reading inside the same function avoids an intermediate block of encoded bytes, and taking one unit
    per task (not ``batch_size`` units, which a fused read + ``map_batches(batch_size=B)`` would wait for)
    keeps all CPUs busy; yielding per slice streams the unit's output instead of holding it to the end."""

    def run(units: dict, *, batch_size: int, reader: dict, keep_ids: np.ndarray | None = None, **kwargs):
        batch = read_units(units, **reader)
        if keep_ids is not None:  # a subset (data.fraction, a label subset): drop other rows before decoding
            mask = np.isin(batch["id"], keep_ids)
            batch = {k: (v[mask] if isinstance(v, np.ndarray) else [x for x, m in zip(v, mask) if m])
                     for k, v in batch.items()}
        n = len(batch["id"])
        for start in range(0, n, batch_size):
            out = task({k: v[start : start + batch_size] for k, v in batch.items()}, **kwargs)
            if len(out["id"]):
                yield out

    run.__name__ = task.__name__
    return run


def train_batch_kwargs(shuffle_buffer: int, seed: int, epoch: int, rank: int) -> dict:
    """``iter_torch_batches`` arguments of a training worker: a local shuffle buffer of ``shuffle_buffer`` rows
    (none for 0) with a seed of (seed, epoch, rank), so batches mix rows of many decode slices and shards, differ
    every epoch and are reproducible. Without it a batch is one task's decode slice, the same images every epoch."""
    if shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    if shuffle_buffer == 0:
        return {}
    shuffle_seed = int(np.random.default_rng([seed, epoch, rank, SHUFFLE_STAGE]).integers(0, 2**31 - 1))
    return {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": shuffle_seed}


def train_stream(source: ShardSource, cfg: StreamConfig | None = None, *,
                 keep_ids: np.ndarray | None = None) -> ImageStream:
    """Shuffled (unit order per epoch + within batches), decoded, two-view (or multi-crop) augmented rows:
    ``view0..viewV-1`` uint8 ``(3, S, S)``, ``id``, ``label``, ``labels``. ``keep_ids``: only these dataset
    ids (``data.fraction``, a label subset), filtered before decoding."""
    cfg = cfg or StreamConfig()
    keep_ids = _kept(keep_ids)
    ledger = _ledger(source, cfg, "train", keep_ids)
    ds = source.units_dataset(shuffle_seed=cfg.seed if cfg.shuffle else None)
    ds = ds.map_batches(_per_unit(_train_task), batch_size=None, num_cpus=1,
                        fn_kwargs={"batch_size": cfg.batch_size, "reader": source.reader_kwargs(),
                                   "transforms": cfg.transforms, "augment_on": cfg.augment_on, "seed": cfg.seed,
                                   "ledger": ledger, "keep_ids": keep_ids})
    return ImageStream("train", _budget(ds, cfg), source, cfg, ledger)


def embed_stream(source: ShardSource, cfg: StreamConfig | None = None, *,
                 keep_ids: np.ndarray | None = None) -> ImageStream:
    """Every row once (``keep_ids``: every one of these ids), in a deterministic order, eval-transformed:
    ``image`` uint8, ``id``, ``label``, ``labels``."""
    cfg = cfg or StreamConfig()
    keep_ids = _kept(keep_ids)
    ledger = _ledger(source, cfg, "embed", keep_ids)
    ds = source.units_dataset(shuffle_seed=None)
    ds = ds.map_batches(_per_unit(_embed_task), batch_size=None, num_cpus=1,
                        fn_kwargs={"batch_size": cfg.batch_size, "reader": source.reader_kwargs(),
                                   "transforms": cfg.transforms, "ledger": ledger, "keep_ids": keep_ids})
    ds = _budget(ds, cfg)
    ds.context.execution_options.preserve_order = True
    return ImageStream("embed", ds, source, cfg, ledger)


def train_data_config(embed_names: str | tuple[str, ...] = ("embed", "val")):
    """A Ray Train ``DataConfig`` that splits ``train`` equally and the ``embed_names`` streams (E-step and
    evaluation) without dropping rows, each row to exactly one worker, in a deterministic order."""
    from ray.train import DataConfig

    unsplit = {embed_names} if isinstance(embed_names, str) else set(embed_names)

    class _HierclrDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)  # keeps the stream's own CPU budget and order options
                user_options = self._get_user_execution_options(name)
                if user_options is not None:
                    ds.context.execution_options = user_options
                if name in unsplit:
                    ds.context.execution_options.preserve_order = True
                splits = ds.streaming_split(world_size, equal=name not in unsplit)
                for i, s in enumerate(splits):
                    output[i][name] = s
            return output

    return _HierclrDataConfig()


def eval_batches(iterator, eval_mean, eval_std, batch_size: int):
    """``(normalised images, ids, labels)`` CPU batches of an ``embed`` stream's dataset shard (a Ray Train
    ``get_dataset_shard`` iterator), for embedding passes and evaluation."""
    mean = torch.tensor(eval_mean).view(1, 3, 1, 1)
    std = torch.tensor(eval_std).view(1, 3, 1, 1)
    for batch in iterator.iter_torch_batches(batch_size=batch_size, device="cpu"):
        x = (batch["image"].float() / 255.0 - mean) / std
        yield x, batch["id"], batch["label"]
