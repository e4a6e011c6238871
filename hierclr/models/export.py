"""Export a trained trunk as a plain torchvision ResNet state dict (``hierclr export``).

The output is ``torch.save(state_dict, out)`` of a torchvision ``ResNet``: every key of the matching constructor,
``fc`` included, so ``model.load_state_dict(torch.load(out))`` loads it strictly with no hierclr installed.
``fc`` (``(num_classes, feature_dim)``) is the source's own classifier when it has one of that size (a hierclr
finetune checkpoint's ``classifier``, a torchvision state dict's ``fc``), otherwise zeros: a placeholder that
gives uniform logits, to be replaced (``model.fc = nn.Identity()`` for features) or trained.

Sources: everything :func:`hierclr.models.loading.read_source` reads (hierclr pretrain / supervised checkpoint,
run directory, ``best_encoder.pt`` / ``best_model.pt``, torchvision state dict, official MoCo-style checkpoint,
MLflow ``mlflow:<run_id>`` / ``runs:/<run_id>/<name>`` / ``models:/<id>``).

The architecture is read from the weights (block type from ``layer1.0.conv3``, blocks per stage, bottleneck
width and groups, stem from ``conv1``'s kernel) and written with the provenance to a JSON sidecar
``<out>.json`` that also holds a ``load`` snippet. Two trunks hierclr trains have no torchvision constructor of
their own:

* ``resnet10`` (one BasicBlock per stage): ``torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])``;
* the CIFAR stem (3x3 stride-1 ``conv1``, no max-pool): build the torchvision model, then
  ``model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); model.maxpool = nn.Identity()`` before loading.
  (The max-pool has no weights: that it is absent is hierclr's convention for a 3x3 stem, not read from the file.)
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from hierclr.models.loading import CheckpointMismatchError, _strict_load, read_source

__all__ = ["ExportResult", "ResNetSpec", "export_backbone", "infer_resnet", "sidecar_path"]

FORMAT = "torchvision-resnet-state-dict"
DEFAULT_NUM_CLASSES = 1000

# (block, layers, groups, width_per_group) -> torchvision constructor name (resnet10: hierclr's, no constructor)
_NAMED = {
    ("BasicBlock", (1, 1, 1, 1), 1, 64): "resnet10",
    ("BasicBlock", (2, 2, 2, 2), 1, 64): "resnet18",
    ("BasicBlock", (3, 4, 6, 3), 1, 64): "resnet34",
    ("Bottleneck", (3, 4, 6, 3), 1, 64): "resnet50",
    ("Bottleneck", (3, 4, 23, 3), 1, 64): "resnet101",
    ("Bottleneck", (3, 8, 36, 3), 1, 64): "resnet152",
    ("Bottleneck", (3, 4, 6, 3), 32, 4): "resnext50_32x4d",
    ("Bottleneck", (3, 4, 23, 3), 32, 8): "resnext101_32x8d",
    ("Bottleneck", (3, 4, 23, 3), 64, 4): "resnext101_64x4d",
    ("Bottleneck", (3, 4, 6, 3), 1, 128): "wide_resnet50_2",
    ("Bottleneck", (3, 4, 23, 3), 1, 128): "wide_resnet101_2",
}
_BLOCKS = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet read from its weights. ``arch``: the torchvision constructor name (``resnet10`` for hierclr's
    one-block-per-stage trunk), ``None`` for a layout torchvision has no name for."""

    arch: str | None
    block: str  # "BasicBlock" | "Bottleneck"
    layers: tuple[int, int, int, int]
    groups: int
    width_per_group: int
    cifar_stem: bool
    feature_dim: int

    @property
    def torchvision_constructor(self) -> bool:
        """Whether ``torchvision.models.<arch>`` builds this trunk (ImageNet stem and a named layout)."""
        return self.arch is not None and self.arch != "resnet10"

    def constructor(self, num_classes: int) -> str:
        """The Python expression that builds the matching torchvision model (before any stem swap)."""
        if self.torchvision_constructor:
            return f"torchvision.models.{self.arch}(num_classes={num_classes})"
        extra = "" if (self.groups, self.width_per_group) == (1, 64) else \
            f", groups={self.groups}, width_per_group={self.width_per_group}"
        return (f"torchvision.models.resnet.ResNet(torchvision.models.resnet.{self.block}, {list(self.layers)}, "
                f"num_classes={num_classes}{extra})")

    def build(self, num_classes: int) -> ResNet:
        """A randomly initialised torchvision ResNet of this layout (stem swapped for a CIFAR-stem trunk)."""
        model = ResNet(_BLOCKS[self.block], list(self.layers), num_classes=num_classes, groups=self.groups,
                       width_per_group=self.width_per_group)
        if self.cifar_stem:
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        return model


def infer_resnet(trunk: dict[str, torch.Tensor]) -> ResNetSpec:
    """Read the ResNet layout from a trunk state dict with torchvision names (``fc`` may be absent)."""
    conv1 = trunk.get("conv1.weight")
    blocks: dict[int, set[int]] = {}
    for k in trunk:
        m = re.match(r"^layer([1-4])\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if conv1 is None or conv1.dim() != 4 or sorted(blocks) != [1, 2, 3, 4]:
        raise CheckpointMismatchError(f"not a ResNet trunk: expected conv1.weight and layer1..layer4 "
                                      f"(first keys: {list(trunk)[:6]})")
    layers = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
    for i in (1, 2, 3, 4):
        if blocks[i] != set(range(layers[i - 1])):
            raise CheckpointMismatchError(f"not a ResNet trunk: layer{i} blocks {sorted(blocks[i])} are not 0..n-1")
    bottleneck = "layer1.0.conv3.weight" in trunk
    if bottleneck:
        conv2 = trunk["layer1.0.conv2.weight"]  # (width, width / groups, 3, 3); width = 64 * wpg / 64 * groups
        width, per_group = int(conv2.shape[0]), int(conv2.shape[1])
        groups = width // per_group
        width_per_group = width // groups
        last = trunk[f"layer4.{layers[3] - 1}.bn3.weight"]
    else:
        groups, width_per_group = 1, 64
        last = trunk[f"layer4.{layers[3] - 1}.bn2.weight"]
    kernel = tuple(conv1.shape[-2:])
    if kernel not in ((7, 7), (3, 3)) or conv1.shape[:2] != (64, 3):
        raise CheckpointMismatchError(f"unsupported ResNet stem: conv1.weight {tuple(conv1.shape)} (expected a "
                                      "(64, 3, 7, 7) ImageNet stem or a (64, 3, 3, 3) CIFAR stem)")
    block = "Bottleneck" if bottleneck else "BasicBlock"
    return ResNetSpec(arch=_NAMED.get((block, layers, groups, width_per_group)), block=block, layers=layers,
                      groups=groups, width_per_group=width_per_group, cifar_stem=kernel == (3, 3),
                      feature_dim=int(last.shape[0]))


@dataclass(frozen=True)
class ExportResult:
    path: str  # the state dict file
    sidecar: str  # <path>.json
    arch: str | None
    cifar_stem: bool
    feature_dim: int
    num_classes: int
    fc: str  # "checkpoint" (the source's classifier) | "zeros"
    kind: str  # the source kind (hierclr-pretrain, hierclr-supervised, torchvision, official-moco, mlflow-model)
    source: str
    origin: str  # what was read: a file, a checkpoint directory, a models:/ URI
    epoch: int | None  # the epoch of the weights (None: the source does not say)
    which: str | None  # "last" (a run's newest checkpoint, encoder_last) | "best" (best_*.pt, encoder_best) | None
    load: str  # Python that loads the file without hierclr


def sidecar_path(out: str | Path) -> str:
    return f"{out}.json"


def _classifier(kind: str, state: dict[str, torch.Tensor], feature_dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The source's own linear classifier on the trunk features, if it has one."""
    if kind == "torchvision":
        sd = {k.removeprefix("module."): v for k, v in state.items()}
        w, b = sd.get("fc.weight"), sd.get("fc.bias")
    elif kind == "hierclr-supervised":
        w, b = state.get("classifier.weight"), state.get("classifier.bias")
    else:  # pretraining heads (MoCo MLP, official encoder_q.fc) are projections, not classifiers
        return None
    if w is None or b is None or w.dim() != 2 or w.shape[1] != feature_dim or b.shape != (w.shape[0],):
        return None
    return w, b


def _load_snippet(spec: ResNetSpec, num_classes: int, path: str) -> str:
    lines = ["import torch", "import torchvision"]
    if spec.cifar_stem:
        lines.append("from torch import nn")
    lines.append(f"model = {spec.constructor(num_classes)}")
    if spec.cifar_stem:
        lines += ["model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # CIFAR stem",
                  "model.maxpool = nn.Identity()"]
    lines += [f"model.load_state_dict(torch.load({path!r}, map_location='cpu', weights_only=True))",
              f"# features: model.fc = torch.nn.Identity() -> (B, {spec.feature_dim})"]
    return "\n".join(lines)


def export_backbone(source: str | Path, out: str | Path, *, num_classes: int | None = None,
                    classifier: bool = True, tracking_uri: str | None = None) -> ExportResult:
    """Write ``source``'s trunk to ``out`` as a torchvision ResNet state dict, and ``<out>.json``.

    ``num_classes``: rows of ``fc``; default: the source classifier's, else 1000. ``classifier`` False:
    ``fc`` is zeros even when the source has a classifier. The written dict is first loaded strictly into the
    torchvision model it claims to fit (so a mismatch raises here, not at the user's). ``out`` may be a local
    path or an ``s3://`` / ``gs://`` URI. ``tracking_uri``: the MLflow store of an MLflow source.
    """
    import hierclr
    from hierclr.io.fs import resolve

    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    found = read_source(source, tracking_uri=tracking_uri)
    spec = infer_resnet(found.trunk)
    own = _classifier(found.kind, found.state, spec.feature_dim) if classifier else None
    n = num_classes if num_classes is not None else (own[0].shape[0] if own is not None else DEFAULT_NUM_CLASSES)
    fc_kind = "checkpoint" if own is not None and own[0].shape[0] == n else "zeros"
    if fc_kind == "checkpoint":
        fc_w, fc_b = own
    else:
        fc_w, fc_b = torch.zeros(n, spec.feature_dim), torch.zeros(n)
    state = dict(found.trunk)
    for k in [k for k in state if k.endswith(".running_var")]:  # files from old PyTorch lack the BN counter
        state.setdefault(k.removesuffix("running_var") + "num_batches_tracked", torch.tensor(0))
    state.update({"fc.weight": fc_w, "fc.bias": fc_b})

    with torch.device("meta"):  # shapes only: the weights are assigned, no initialisation to pay for
        model = spec.build(n)
    _strict_load(model, state, "ResNet trunk", str(source), assign=True)  # names missing / unexpected keys
    out_sd = model.state_dict()
    buf = io.BytesIO()
    torch.save(out_sd, buf)
    data = buf.getvalue()
    loc = resolve(str(out))
    if loc.is_dir():
        raise ValueError(f"export: {out} is a directory; give the output file name (e.g. {out}/resnet.pth)")
    loc.write_bytes_atomic(data)

    load = _load_snippet(spec, n, str(out))
    result = ExportResult(path=str(out), sidecar=sidecar_path(out), arch=spec.arch, cifar_stem=spec.cifar_stem,
                          feature_dim=spec.feature_dim, num_classes=n, fc=fc_kind, kind=found.kind, source=str(source),
                          origin=found.origin, epoch=found.epoch, which=found.which, load=load)
    meta = {"format": FORMAT, **asdict(result), "constructor": spec.constructor(n), "block": spec.block,
            "layers": list(spec.layers), "groups": spec.groups, "width_per_group": spec.width_per_group,
            "sha256": hashlib.sha256(data).hexdigest(), "hierclr_version": hierclr.__version__,
            "notes": _notes(spec, fc_kind)}
    for key in ("path", "sidecar"):
        meta.pop(key)
    meta["file"] = Path(loc.path).name
    resolve(result.sidecar).write_bytes_atomic((json.dumps(meta, indent=1) + "\n").encode())
    return result


def _notes(spec: ResNetSpec, fc_kind: str) -> list[str]:
    notes = []
    if spec.arch == "resnet10":
        notes.append("resnet10 is hierclr's ResNet(BasicBlock, [1, 1, 1, 1]); torchvision has no resnet10 "
                     "constructor: build torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1]).")
    elif spec.arch is None:
        notes.append("no named torchvision constructor has this layout: build torchvision.models.resnet.ResNet "
                     "as in 'constructor'.")
    if spec.cifar_stem:
        notes.append("CIFAR stem (3x3 stride-1 conv1, no max-pool): torchvision's constructors build the ImageNet "
                     "stem; set model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False) and "
                     "model.maxpool = nn.Identity() before load_state_dict (see 'load').")
    if fc_kind == "zeros":
        notes.append("fc is a zero placeholder (the source has no classifier of this size): replace it, or set "
                     "model.fc = nn.Identity() for the feature_dim features.")
    return notes
