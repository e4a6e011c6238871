"""Trunk weights from the four checkpoint kinds users have, and the errors for the wrong ones."""
from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from hierclr.io.checkpoint import TrainingState, save_checkpoint
from hierclr.models import MoCo, build_backbone
from hierclr.models.heads import MLPHead
from hierclr.models.loading import CheckpointMismatchError, load_backbone, split_trunk_head


def _same(a: torch.nn.Module, b_state: dict) -> bool:
    return all(torch.equal(v, b_state[k]) for k, v in a.state_dict().items())


def _moco(seed: int = 1) -> MoCo:
    torch.manual_seed(seed)
    return MoCo("resnet10", dim=16, hidden_dim=32, queue_size=8, cifar_stem=True)


def test_torchvision_state_dict_loads_and_drops_fc(tmp_path):
    torch.manual_seed(3)
    ref = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    trunk, _ = build_backbone("resnet18")
    assert load_backbone(trunk, path) == "torchvision"
    want = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert _same(trunk, want)
    x = torch.randn(2, 3, 64, 64)
    ref.fc = torch.nn.Identity()
    ref.eval(), trunk.eval()
    assert torch.allclose(trunk(x), ref(x))


def test_hierclr_pretrain_checkpoint_run_dir_and_best_encoder(tmp_path):
    moco = _moco()
    ckpt = tmp_path / "run" / "checkpoint_000001"
    save_checkpoint(ckpt, TrainingState(epoch=0, model=moco.state_dict(), optimizer={}))
    want_trunk = moco.encoder_q.backbone.state_dict()
    for source in (ckpt, tmp_path / "run"):  # the checkpoint itself, or the run dir (its newest checkpoint)
        trunk, _ = build_backbone("resnet10", cifar_stem=True)
        head = MLPHead(512, 32, 16)
        assert load_backbone(trunk, source, head=head) == "hierclr-pretrain"
        assert _same(trunk, want_trunk)
        assert _same(head, moco.encoder_q.head.state_dict())
    best = tmp_path / "best_encoder.pt"
    torch.save({"epoch": 3, "knn_top1": 0.5, "encoder_q": moco.encoder_q.state_dict()}, best)
    trunk, _ = build_backbone("resnet10", cifar_stem=True)
    assert load_backbone(trunk, best) == "hierclr-pretrain"
    assert _same(trunk, want_trunk)


def test_official_moco_style_checkpoint_with_module_prefix_and_fc_head(tmp_path):
    moco = _moco(2)
    enc = moco.encoder_q
    official = {f"module.encoder_q.{k}": v for k, v in enc.backbone.state_dict().items()}
    official.update({f"module.encoder_q.fc.{k}": v for k, v in enc.head.state_dict().items()})
    official.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in enc.backbone.state_dict().items()})
    official["module.queue"] = torch.randn(16, 8)
    path = tmp_path / "checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet10", "state_dict": official}, path)
    trunk, _ = build_backbone("resnet10", cifar_stem=True)
    head = MLPHead(512, 32, 16)
    assert load_backbone(trunk, path, head=head) == "official-moco"
    assert _same(trunk, enc.backbone.state_dict())
    assert _same(head, enc.head.state_dict())


def test_hierclr_supervised_checkpoint(tmp_path):
    from hierclr.models.classifiers import SupervisedNet

    torch.manual_seed(4)
    net = SupervisedNet("resnet10", 5, dim=16, hidden_dim=32)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    trunk, _ = build_backbone("resnet10")
    assert load_backbone(trunk, path) == "hierclr-supervised"
    assert _same(trunk, net.backbone.state_dict())


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    trunk, _ = build_backbone("resnet50")
    with pytest.raises(CheckpointMismatchError) as e:
        load_backbone(trunk, path)
    msg = str(e.value)
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg  # resnet50 bottlenecks have conv3
    assert "shape mismatch" in msg
    assert str(path) in msg


def test_wrong_stem_and_unknown_layouts(tmp_path):
    moco = _moco()
    ckpt = tmp_path / "c"
    save_checkpoint(ckpt, TrainingState(epoch=0, model=moco.state_dict(), optimizer={}))
    imagenet_stem, _ = build_backbone("resnet10", cifar_stem=False)
    with pytest.raises(CheckpointMismatchError, match="conv1.weight"):
        load_backbone(imagenet_stem, ckpt)  # 3x3 CIFAR stem vs 7x7
    with pytest.raises(CheckpointMismatchError, match="unrecognised checkpoint layout"):
        split_trunk_head({"foo.weight": torch.zeros(1)})
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_backbone(imagenet_stem, bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(imagenet_stem, tmp_path / "nope.pt")
    trunk, _ = build_backbone("resnet18")
    tv = tmp_path / "tv.pth"
    torch.save(resnet18(weights=None).state_dict(), tv)
    with pytest.raises(CheckpointMismatchError, match="no projection head"):
        load_backbone(trunk, tv, head=MLPHead(512, 512, 128))
