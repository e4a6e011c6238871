"""The networks of the supervised modes: a ResNet trunk with the heads each objective reads.

:class:`SupervisedNet` (``hierclr finetune``): trunk -> avgpool features ``h``; ``head(h)`` -> the
L2-normalised embedding ``z`` the contrastive losses (SupCon, LACLN, VarCon) read; ``classifier(h)`` -> the
logits CE reads. With a loss that does not train the classifier (SupCon, VarCon) the classifier sees
``h.detach()``: an online linear probe that reports accuracy during training without shaping the trunk.

:class:`HCALNet` (``hierclr hcal``): trunk -> :class:`~hierclr.models.hcal.HCALHead` (level features and
class prototypes per level).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hierclr.models.backbones import build_backbone
from hierclr.models.hcal import HCALHead
from hierclr.models.heads import MLPHead


class SupervisedOutput(NamedTuple):
    features: torch.Tensor  # (B, F) trunk features
    z: torch.Tensor | None  # (B, dim) L2-normalised embedding (None without a projection head)
    logits: torch.Tensor  # (B, C)


class SupervisedNet(nn.Module):
    """``dim=None``: no projection head (plain CE training: DDP requires every parameter to get a gradient)."""

    def __init__(self, backbone: str, num_classes: int, *, dim: int | None = 128, hidden_dim: int | None = None,
                 cifar_stem: bool = False) -> None:
        super().__init__()
        self.backbone, feat_dim = build_backbone(backbone, cifar_stem=cifar_stem)
        self.head = MLPHead(feat_dim, hidden_dim or feat_dim, dim) if dim else None
        self.classifier = nn.Linear(feat_dim, num_classes)
        self.feat_dim = feat_dim

    def forward(self, x: torch.Tensor, *, probe_only: bool = False) -> SupervisedOutput:
        """``probe_only``: the classifier reads detached trunk features (it cannot train the trunk)."""
        h = self.backbone(x)
        z = F.normalize(self.head(h), dim=1) if self.head is not None else None
        logits = self.classifier(h.detach() if probe_only else h)
        return SupervisedOutput(h, z, logits)

    def head_parameters(self) -> list[nn.Parameter]:
        head = list(self.head.parameters()) if self.head is not None else []
        return [*head, *self.classifier.parameters()]


class HCALNet(nn.Module):
    def __init__(self, backbone: str, num_classes: list[int], *, feat_dim: int = 256, hidden_dim: int | None = None,
                 perturbation: float = 0.05, cifar_stem: bool = False) -> None:
        super().__init__()
        self.backbone, in_dim = build_backbone(backbone, cifar_stem=cifar_stem)
        self.head = HCALHead(in_dim, num_classes, feat_dim=feat_dim, perturbation=perturbation, hidden_dim=hidden_dim)
        self.feat_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, feat_dim) L2-normalised level-0 features."""
        return self.head(self.backbone(x))
