"""ResNet trunks for contrastive pretraining, with randomly initialised weights.

HCSC (like MoCo v2) uses a torchvision ResNet whose ``fc`` is replaced by a projection head; the
trunk itself outputs the 512-/2048-d average-pooled features that kNN and linear evaluation read.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import ResNet, resnet18, resnet50
from torchvision.models.resnet import BasicBlock


def resnet10(*, weights=None, **kwargs) -> ResNet:
    """ResNet-10 (one BasicBlock per stage, 512-d features): a small trunk for CPU tests and demos."""
    if weights is not None:
        raise ValueError("resnet10 has no pretrained weights")
    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)


# name -> torchvision constructor; the feature dimension is read from the built model's fc.
_RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet10": resnet10,
    "resnet18": resnet18,
    "resnet50": resnet50,
}

BACKBONE_NAMES: tuple[str, ...] = tuple(_RESNETS)


def build_backbone(
    name: str, *, cifar_stem: bool = False, zero_init_residual: bool = False
) -> tuple[nn.Module, int]:
    """Build a randomly initialised torchvision ResNet without its classifier.

    Returns ``(backbone, feature_dim)``: ``backbone(x)`` gives the ``(B, feature_dim)`` avgpool
    features (``fc`` is ``nn.Identity()``), 512 for resnet18 and 2048 for resnet50.

    ``cifar_stem=True`` swaps the ImageNet stem (7x7 stride-2 conv + max-pool, a 4x downsampling)
    for a 3x3 stride-1 conv and no max-pool, the usual choice for 32 px images: a 32 px input then
    reaches ``layer4`` at 4x4 instead of 1x1.

    ``zero_init_residual`` is passed to torchvision (last BN of each residual block starts at 0).
    No pretrained weights are ever downloaded.
    """
    if name not in _RESNETS:
        raise ValueError(
            f"unknown backbone {name!r}; allowed: {', '.join(BACKBONE_NAMES)}"
        )
    model = _RESNETS[name](weights=None, zero_init_residual=zero_init_residual)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    if cifar_stem:
        conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        # Same initialisation torchvision gives every conv of the ResNet.
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = conv1
        model.maxpool = nn.Identity()
    return model, feature_dim
