"""Models: ResNet backbones, projection heads, and the MoCo v2 model that HCSC trains."""

from hierclr.models.backbones import BACKBONE_NAMES, build_backbone
from hierclr.models.heads import MLPHead
from hierclr.models.moco import Encoder, MoCo, concat_all_gather

__all__ = [
    "BACKBONE_NAMES",
    "Encoder",
    "MLPHead",
    "MoCo",
    "build_backbone",
    "concat_all_gather",
]
