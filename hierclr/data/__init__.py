"""Everything between image files and a batch of augmented tensors.

- :func:`open_source`: parquet shards (``prepare-data`` output), WebDataset tars or an ImageFolder tree,
  local or ``s3://`` / ``gs://`` -> a :class:`ShardSource` whose rows are ``id, image, label, labels``.
- :func:`train_stream` / :func:`embed_stream`: the two Ray Data streams the trainer reads.
- :class:`LabelHierarchy`: class names per level and parent maps (JSON, edge lists, CIFAR-100 built in).
- :mod:`hierclr.data.transforms`: MoCo v2 / multi-crop / eval transforms, batched per-sample colour ops.
- :func:`prepare_data`: the ``hierclr prepare-data`` conversion (resumable, parallel on Ray).
"""
from hierclr.data.bad_images import BadImage, TooManyBadImagesError
from hierclr.data.manifest import Manifest
from hierclr.data.prepare import PrepareConfig, prepare_data
from hierclr.data.source import ShardSource, open_source
from hierclr.data.streams import ImageStream, StreamConfig, embed_stream, finish_views, train_data_config, train_stream
from hierclr.data.transforms import AugmentConfig, EvalTransformConfig, MultiViewAugment, TransformConfig
from hierclr.io.errors import DataFormatError
from hierclr.labels import HierarchyError, LabelHierarchy, cifar100, load_hierarchy

__all__ = [
    "AugmentConfig", "BadImage", "DataFormatError", "EvalTransformConfig", "HierarchyError", "ImageStream",
    "LabelHierarchy", "Manifest", "MultiViewAugment", "PrepareConfig", "ShardSource", "StreamConfig",
    "TooManyBadImagesError", "TransformConfig", "cifar100", "embed_stream", "finish_views", "load_hierarchy",
    "open_source", "prepare_data", "train_data_config", "train_stream",
]
