"""``hierclr export``: every checkpoint kind becomes a torchvision ResNet state dict that loads strictly into
the matching torchvision constructor in a fresh interpreter without hierclr, and computes the same features."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from hierclr.cli import main
from hierclr.io.checkpoint import TrainingState, save_checkpoint
from hierclr.models import MoCo, build_backbone
from hierclr.models.classifiers import SupervisedNet
from hierclr.models.export import export_backbone, infer_resnet, sidecar_path
from hierclr.models.loading import CheckpointMismatchError


def _warm_bn(net: torch.nn.Module, size: int) -> None:
    """Non-trivial BatchNorm running statistics, so that eval-mode outputs depend on them."""
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, size, size) * 2 + 0.5)
    net.eval()


# The isolated interpreter: `-I` ignores PYTHONPATH, the working directory and user site; it never imports hierclr.
_ISOLATED = textwrap.dedent("""
    import json, sys
    import torch, torchvision
    from torch import nn
    jobs = json.loads(sys.argv[1])
    for job in jobs:
        ns = {}  # the code imports what it needs: the sidecar's `load` snippet must be self-contained
        exec(job["code"], ns)  # builds `model` and loads the file strictly (load_state_dict's default)
        model = ns["model"].eval()
        x = torch.load(job["x"], weights_only=True)
        with torch.no_grad():
            logits = model(x)
            model.fc = nn.Identity()
            features = model(x)
        torch.save({"features": features, "logits": logits}, job["out"])
    assert "hierclr" not in sys.modules, "the isolated loader imported hierclr"
    print("isolated ok", torch.__version__)
""")


def _torchvision_code(constructor: str, path, strict: bool = True) -> str:
    return ("import torch\nimport torchvision\n"
            f"model = torchvision.models.{constructor}\n"
            f"missing = model.load_state_dict(torch.load({str(path)!r}, weights_only=True), strict={strict})\n"
            "assert not missing.missing_keys and not missing.unexpected_keys, missing\n")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Sources of every kind, exported; reference outputs computed with hierclr; the exports then run in one
    isolated interpreter. Returns name -> dict(result, features, logits, isolated outputs)."""
    tmp = tmp_path_factory.mktemp("export")
    cases: dict[str, dict] = {}

    # hierclr pretraining checkpoint (MoCo resnet18, ImageNet stem), via its run directory
    torch.manual_seed(0)
    moco = MoCo("resnet18", dim=16, hidden_dim=32, queue_size=8)
    _warm_bn(moco.encoder_q.backbone, 64)
    save_checkpoint(tmp / "pre" / "checkpoint_000000", TrainingState(epoch=0, model=moco.state_dict(), optimizer={}))
    cases["pretrain"] = {"source": tmp / "pre", "trunk": moco.encoder_q.backbone, "size": 64,
                         "code": lambda p: _torchvision_code("resnet18()", p)}

    # official MoCo-style checkpoint of a resnet50 (module.encoder_q.*, fc MLP head, encoder_k, queue)
    torch.manual_seed(1)
    trunk50, _ = build_backbone("resnet50")
    _warm_bn(trunk50, 64)
    official = {f"module.encoder_q.{k}": v for k, v in trunk50.state_dict().items()}
    official.update({"module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.0.bias":
                     torch.zeros(2048), "module.encoder_q.fc.2.weight": torch.randn(128, 2048),
                     "module.encoder_q.fc.2.bias": torch.zeros(128), "module.queue": torch.randn(128, 16)})
    official["module.encoder_k.conv1.weight"] = torch.zeros(64, 3, 7, 7)  # the key encoder is ignored
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": official}, tmp / "moco_v2_200ep.pth.tar")
    cases["official"] = {"source": tmp / "moco_v2_200ep.pth.tar", "trunk": trunk50, "size": 64,
                         "code": lambda p: _torchvision_code("resnet50()", p)}

    # hierclr supervised (finetune) network: backbone.*, head.*, classifier.* -> fc is its classifier
    torch.manual_seed(2)
    net = SupervisedNet("resnet18", 7, dim=16, hidden_dim=32)
    _warm_bn(net.backbone, 64)
    torch.save(net.state_dict(), tmp / "supervised.pt")
    cases["supervised"] = {"source": tmp / "supervised.pt", "trunk": net.backbone, "classifier": net.classifier,
                           "size": 64, "code": lambda p: _torchvision_code("resnet18(num_classes=7)", p)}

    # a torchvision state dict (its own 1000-way fc kept), loaded with the sidecar's own snippet
    torch.manual_seed(3)
    tv = resnet18(weights=None)
    _warm_bn(tv, 64)
    torch.save(tv.state_dict(), tmp / "tv.pth")
    tv_trunk, _ = build_backbone("resnet18")
    tv_trunk.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    cases["torchvision"] = {"source": tmp / "tv.pth", "trunk": tv_trunk.eval(), "classifier": tv.fc, "size": 64,
                            "code": None}

    # hierclr resnet10 with the CIFAR stem: the documented conv1 / maxpool swap, from the sidecar snippet
    torch.manual_seed(4)
    small = MoCo("resnet10", dim=16, hidden_dim=32, queue_size=8, cifar_stem=True)
    _warm_bn(small.encoder_q.backbone, 32)
    best = tmp / "best_encoder.pt"
    torch.save({"epoch": 3, "knn_top1": 0.5, "encoder_q": small.encoder_q.state_dict()}, best)
    cases["cifar"] = {"source": best, "trunk": small.encoder_q.backbone, "size": 32, "code": None}

    jobs = []
    for name, case in cases.items():
        out = tmp / f"{name}.pth"
        case["result"] = export_backbone(case["source"], out)
        torch.manual_seed(10)
        x = torch.randn(3, 3, case["size"], case["size"])
        torch.save(x, tmp / f"{name}.x.pt")
        with torch.no_grad():
            case["features"] = case["trunk"].eval()(x)
            if "classifier" in case:
                case["logits"] = case["classifier"](case["features"])
        code = case["code"](out) if case["code"] else case["result"].load
        jobs.append({"code": code, "x": str(tmp / f"{name}.x.pt"), "out": str(tmp / f"{name}.y.pt")})
    proc = subprocess.run([sys.executable, "-I", "-c", _ISOLATED, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=300, cwd=tmp, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "isolated ok" in proc.stdout
    for name, case in cases.items():
        case["isolated"] = torch.load(tmp / f"{name}.y.pt", weights_only=True)
    return cases


@pytest.mark.parametrize("name, arch, kind, dim", [
    ("pretrain", "resnet18", "hierclr-pretrain", 512),
    ("official", "resnet50", "official-moco", 2048),
    ("supervised", "resnet18", "hierclr-supervised", 512),
    ("torchvision", "resnet18", "torchvision", 512),
])
def test_export_loads_strictly_into_torchvision_without_hierclr(exported, name, arch, kind, dim):
    case = exported[name]
    r = case["result"]
    assert (r.arch, r.kind, r.feature_dim, r.cifar_stem) == (arch, kind, dim, False)
    torch.testing.assert_close(case["isolated"]["features"], case["features"])
    meta = json.loads(Path(sidecar_path(r.path)).read_text())
    assert meta["format"] == "torchvision-resnet-state-dict"
    assert {k: meta[k] for k in ("arch", "cifar_stem", "feature_dim", "kind")} == {
        "arch": arch, "cifar_stem": False, "feature_dim": dim, "kind": kind}
    assert meta["source"] == str(case["source"]) and meta["constructor"].startswith(f"torchvision.models.{arch}(")


def test_fc_is_the_source_classifier_or_zeros(exported):
    sup = exported["supervised"]
    assert (sup["result"].fc, sup["result"].num_classes) == ("checkpoint", 7)
    torch.testing.assert_close(sup["isolated"]["logits"], sup["logits"])
    tv = exported["torchvision"]
    assert (tv["result"].fc, tv["result"].num_classes) == ("checkpoint", 1000)
    torch.testing.assert_close(tv["isolated"]["logits"], tv["logits"])
    for name in ("pretrain", "official"):  # MoCo MLP heads are projections, not classifiers
        r = exported[name]["result"]
        assert (r.fc, r.num_classes) == ("zeros", 1000)
        assert torch.count_nonzero(exported[name]["isolated"]["logits"]) == 0
        sd = torch.load(r.path, weights_only=True)
        assert sd["fc.weight"].shape == (1000, r.feature_dim) and not sd["fc.weight"].any()


def test_num_classes_and_no_classifier(exported, tmp_path):
    source = exported["supervised"]["source"]
    r = export_backbone(source, tmp_path / "a.pth", num_classes=10)  # another size: a zero placeholder
    assert (r.fc, r.num_classes) == ("zeros", 10)
    assert torch.load(tmp_path / "a.pth", weights_only=True)["fc.weight"].shape == (10, 512)
    r = export_backbone(source, tmp_path / "b.pth", classifier=False)
    assert (r.fc, r.num_classes) == ("zeros", 1000)
    r = export_backbone(exported["pretrain"]["source"], tmp_path / "c.pth", num_classes=5)
    model = resnet18(num_classes=5)
    model.load_state_dict(torch.load(tmp_path / "c.pth", weights_only=True))
    with pytest.raises(ValueError, match="num_classes"):
        export_backbone(source, tmp_path / "d.pth", num_classes=0)


def test_the_sidecar_names_the_checkpoint_its_epoch_and_last_or_best(exported, tmp_path):
    """A run directory gives its newest checkpoint (last), best_encoder.pt the best; the sidecar says which."""
    want = {"pretrain": (str(exported["pretrain"]["source"] / "checkpoint_000000"), 0, "last"),
            "cifar": (str(exported["cifar"]["source"]), 3, "best"),
            "official": (str(exported["official"]["source"]), 200, None),  # the official file's own epoch
            "torchvision": (str(exported["torchvision"]["source"]), None, None)}
    for name, (origin, epoch, which) in want.items():
        r = exported[name]["result"]
        meta = json.loads(Path(r.sidecar).read_text())
        assert (r.origin, r.epoch, r.which) == (meta["origin"], meta["epoch"], meta["which"]) == (origin, epoch, which)
    ckpt = exported["pretrain"]["source"] / "checkpoint_000000"  # a checkpoint named itself: its epoch, not "last"
    r = export_backbone(ckpt, tmp_path / "c.pth")
    assert (r.origin, r.epoch, r.which) == (str(ckpt), 0, None)


def test_supervised_best_model_file(exported, tmp_path):
    """A finetune run's best_model.pt wraps the network state: {"epoch", metrics..., "model": state}."""
    state = torch.load(exported["supervised"]["source"], weights_only=True)
    torch.save({"epoch": 2, "acc/top1": 0.5, "model": state}, tmp_path / "best_model.pt")
    r = export_backbone(tmp_path / "best_model.pt", tmp_path / "best.pth")
    assert (r.kind, r.fc, r.num_classes, r.epoch, r.which) == ("hierclr-supervised", "checkpoint", 7, 2, "best")
    got = torch.load(tmp_path / "best.pth", weights_only=True)
    assert torch.equal(got["fc.weight"], state["classifier.weight"])
    assert torch.equal(got["layer4.1.bn2.running_var"], state["backbone.layer4.1.bn2.running_var"])


def test_cifar_stem_resnet10_loads_after_the_documented_swap(exported):
    case = exported["cifar"]
    r = case["result"]
    assert (r.arch, r.cifar_stem, r.feature_dim, r.kind) == ("resnet10", True, 512, "hierclr-pretrain")
    assert "ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1]" in r.load
    assert "model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)" in r.load
    assert "model.maxpool = nn.Identity()" in r.load
    torch.testing.assert_close(case["isolated"]["features"], case["features"])
    notes = " ".join(json.loads(Path(r.sidecar).read_text())["notes"])
    assert "CIFAR stem" in notes and "ResNet(BasicBlock, [1, 1, 1, 1])" in notes
    # without the swap the file does not fit torchvision's ImageNet stem
    from torchvision.models.resnet import BasicBlock, ResNet

    with pytest.raises(RuntimeError, match="conv1.weight"):
        ResNet(BasicBlock, [1, 1, 1, 1]).load_state_dict(torch.load(r.path, weights_only=True))


def test_infer_resnet_layouts():
    from torchvision.models import resnet34, resnext50_32x4d, wide_resnet50_2

    specs = {}
    for ctor, name in ((resnet34, "resnet34"), (resnext50_32x4d, "resnext50_32x4d"),
                       (wide_resnet50_2, "wide_resnet50_2")):
        with torch.device("meta"):  # shapes are all it reads
            specs[name] = spec = infer_resnet(ctor(weights=None).state_dict())
        assert spec.arch == name and not spec.cifar_stem
    spec = specs["resnext50_32x4d"]
    assert (spec.block, spec.layers, spec.groups, spec.width_per_group, spec.feature_dim) == (
        "Bottleneck", (3, 4, 6, 3), 32, 4, 2048)
    with pytest.raises(CheckpointMismatchError, match="not a ResNet trunk"):
        infer_resnet({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(1)})


def test_cli_export_end_to_end(exported, tmp_path, capsys):
    out = tmp_path / "sub" / "r18.pth"
    assert main(["export", str(exported["pretrain"]["source"]), str(out), "--num-classes", "3"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["arch"] == "resnet18" and summary["num_classes"] == 3 and summary["out"] == str(out)
    assert "model.load_state_dict" in captured.err
    model = resnet18(num_classes=3)
    model.load_state_dict(torch.load(out, weights_only=True))
    model.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), exported["pretrain"]["trunk"].eval()(x))
    assert json.loads((tmp_path / "sub" / "r18.pth.json").read_text())["num_classes"] == 3

    assert main(["export", str(exported["cifar"]["source"]), str(tmp_path / "c.pth")]) == 0
    err = capsys.readouterr().err
    assert "CIFAR stem" in err and "model.maxpool = nn.Identity()" in err


def test_wrong_sources_are_clear_errors(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["export", str(garbage), str(tmp_path / "x.pth")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "x.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    unknown = tmp_path / "unknown.pt"
    torch.save({"foo.weight": torch.zeros(2)}, unknown)
    assert main(["export", str(unknown), str(tmp_path / "x.pth")]) == 2
    assert "unrecognised checkpoint layout" in capsys.readouterr().err
    not_resnet = tmp_path / "mlp.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(2, 8)}, not_resnet)
    assert main(["export", str(not_resnet), str(tmp_path / "x.pth")]) == 2
    assert "not a ResNet trunk" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.pth.json").exists()
