"""Everything between image files and a batch of augmented tensors.

- :func:`open_source`: parquet shards (``prepare-data`` output), WebDataset tars or an ImageFolder tree,
  local or ``s3://`` / ``gs://`` -> a :class:`ShardSource` whose rows are ``id, image, label, labels``.
- :func:`train_stream` / :func:`embed_stream`: the two Ray Data streams the trainer reads.
- :class:`LabelHierarchy`: class names per level and parent maps (JSON, edge lists, CIFAR-100 built in).
- :mod:`hierclr.data.transforms`: MoCo v2 / multi-crop / eval transforms, batched per-sample colour ops.
- :func:`prepare_data`: the ``hierclr prepare-data`` conversion (resumable, parallel on Ray).

The names below are imported on first use (PEP 562): Ray starts every actor in a fresh process that imports
its class's module and therefore this package; the small actors (epoch clock, bad-image ledger) must not pay
for torch and torchvision there.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "BadImage": "bad_images", "TooManyBadImagesError": "bad_images", "Manifest": "manifest",
    "PrepareConfig": "prepare", "prepare_data": "prepare", "ShardSource": "source", "open_source": "source",
    "count_rows": "source", "ImageStream": "streams", "StreamConfig": "streams", "embed_stream": "streams",
    "finish_views": "streams",
    "train_data_config": "streams", "train_stream": "streams", "AugmentConfig": "transforms",
    "EvalTransformConfig": "transforms", "MultiViewAugment": "transforms", "TransformConfig": "transforms",
}
_ELSEWHERE = {
    "DataFormatError": "hierclr.io.errors", "HierarchyError": "hierclr.labels", "LabelHierarchy": "hierclr.labels",
    "cifar100": "hierclr.labels", "load_hierarchy": "hierclr.labels",
}

__all__ = [*_WHERE, *_ELSEWHERE]  # noqa: PLE0604 -- the lazy names are the package's names


def __getattr__(name: str):  # PEP 562: first use of a name imports its module
    if name in _WHERE:
        module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
    elif name in _ELSEWHERE:
        module = importlib.import_module(_ELSEWHERE[name])
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
