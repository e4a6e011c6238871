"""Models: ResNet backbones, projection heads, the MoCo v2 model that HCSC trains, and the supervised / HCAL
networks."""

from hierclr.models.backbones import BACKBONE_NAMES, build_backbone
from hierclr.models.classifiers import HCALNet, SupervisedNet
from hierclr.models.hcal import HCALHead
from hierclr.models.heads import MLPHead
from hierclr.models.moco import Encoder, MoCo, concat_all_gather

__all__ = [
    "BACKBONE_NAMES",
    "Encoder",
    "HCALHead",
    "HCALNet",
    "MLPHead",
    "MoCo",
    "SupervisedNet",
    "build_backbone",
    "concat_all_gather",
]
