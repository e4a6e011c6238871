"""Tests for hierclr.models.backbones and hierclr.models.heads."""

import pytest
import torch
from torch import nn

from hierclr.models import BACKBONE_NAMES, MLPHead, build_backbone


@pytest.mark.parametrize(
    ("name", "feature_dim"), [("resnet18", 512), ("resnet50", 2048)]
)
def test_backbone_outputs_pooled_features(name, feature_dim):
    torch.manual_seed(0)
    backbone, dim = build_backbone(name, cifar_stem=True)
    assert dim == feature_dim
    assert isinstance(backbone.fc, nn.Identity)
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, feature_dim)


def test_imagenet_stem_is_torchvision_default():
    backbone, dim = build_backbone("resnet18")
    assert dim == 512
    assert backbone.conv1.kernel_size == (7, 7) and backbone.conv1.stride == (2, 2)
    assert isinstance(backbone.maxpool, nn.MaxPool2d)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_cifar_stem_layers_and_spatial_size():
    backbone, _ = build_backbone("resnet18", cifar_stem=True)
    conv1 = backbone.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.in_channels == 3 and conv1.out_channels == 64
    assert (
        conv1.kernel_size == (3, 3)
        and conv1.stride == (1, 1)
        and conv1.padding == (1, 1)
    )
    assert conv1.bias is None
    assert isinstance(backbone.maxpool, nn.Identity)

    seen = {}

    def record_layer4(_module, _inputs, output):
        seen["layer4"] = tuple(output.shape)

    backbone.layer4.register_forward_hook(record_layer4)
    backbone.eval()
    with torch.no_grad():
        backbone(torch.randn(2, 3, 32, 32))
    assert seen["layer4"] == (2, 512, 4, 4)


def test_zero_init_residual_is_passed_through():
    backbone, _ = build_backbone("resnet18", zero_init_residual=True)
    assert torch.count_nonzero(backbone.layer1[0].bn2.weight) == 0
    backbone, _ = build_backbone("resnet18")
    assert torch.count_nonzero(backbone.layer1[0].bn2.weight) > 0


def test_unknown_backbone_name_raises():
    with pytest.raises(ValueError, match="resnet1000") as info:
        build_backbone("resnet1000")
    for allowed in BACKBONE_NAMES:
        assert allowed in str(info.value)


def test_mlp_head_structure_and_shape():
    head = MLPHead(512, 256, 128)
    assert len(head) == 3
    assert isinstance(head[0], nn.Linear)
    assert (head[0].in_features, head[0].out_features) == (512, 256)
    assert isinstance(head[1], nn.ReLU)
    assert isinstance(head[2], nn.Linear)
    assert (head[2].in_features, head[2].out_features) == (256, 128)
    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules()
    )
    assert sorted(name for name, _ in head.named_parameters()) == [
        "0.bias",
        "0.weight",
        "2.bias",
        "2.weight",
    ]
    x = torch.randn(5, 512)
    out = head(x)
    assert out.shape == (5, 128)
    torch.testing.assert_close(out, head[2](torch.relu(head[0](x))))


def test_mlp_head_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hidden_dim"):
        MLPHead(512, 0, 128)
