"""Load a ResNet trunk (and optionally a MoCo projection head) from the checkpoint kinds users have.

Four sources load into the same :func:`hierclr.models.backbones.build_backbone` trunk:

* a hierclr pretraining checkpoint directory (``model.pt``: MoCo state, ``encoder_q.backbone.*``), a hierclr
  run directory (its newest complete checkpoint) or a run's ``best_encoder.pt`` (``{"encoder_q": ...}``);
* a hierclr supervised checkpoint (``model.pt`` with ``backbone.*``);
* a torchvision ResNet state dict (``conv1.weight`` ... ``fc.weight``; the 1000-way ``fc`` is dropped);
* an official HCSC / PCL / MoCo checkpoint (``{"state_dict": {"module.encoder_q.conv1.weight", ...,
  "module.encoder_q.fc.0.weight", ...}}``): the trunk from ``encoder_q``, its ``fc`` MLP is the head.

The trunk is loaded strictly: a missing or unexpected key raises :class:`CheckpointMismatchError` naming
them (the usual cause is a backbone / stem mismatch, e.g. ``resnet18`` weights into ``resnet50``).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """The weights do not fit the network: names the missing and unexpected keys."""


def _torch_load(data: bytes, where: str) -> dict:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch.load raises many types for a foreign or corrupt file
        raise ValueError(f"{where}: not a readable PyTorch checkpoint: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a state dict (a mapping), got {type(obj).__name__}")  # noqa: TRY004
    return obj


def read_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict behind ``source`` (file or hierclr checkpoint / run directory)."""
    from hierclr.data.fs import resolve
    from hierclr.engine.checkpoint import latest_checkpoint

    text = str(source)
    loc = resolve(text)
    if loc.is_dir():
        ckpt = latest_checkpoint(text)
        return _flatten(_torch_load(Path(ckpt, "model.pt").read_bytes(), f"{ckpt}/model.pt"))
    if not loc.exists():
        raise FileNotFoundError(f"model.init: {text} does not exist")
    return _flatten(_torch_load(loc.read_bytes(), text))


def _flatten(obj: dict) -> dict[str, torch.Tensor]:
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # official MoCo / PCL / HCSC files
        obj = obj["state_dict"]
    if "encoder_q" in obj and isinstance(obj["encoder_q"], dict):  # hierclr best_encoder.pt
        obj = {f"encoder_q.{k}": v for k, v in obj["encoder_q"].items()}
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def split_trunk_head(sd: dict[str, torch.Tensor]) -> tuple[str, dict, dict]:
    """``(kind, trunk state, head state)`` with trunk keys as torchvision names them (no ``fc``)."""
    keys = list(sd)
    for prefix, kind in (("encoder_q.backbone.", "hierclr-pretrain"), ("backbone.", "hierclr-supervised")):
        if any(k.startswith(prefix) for k in keys):
            trunk = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            hp = "encoder_q.head." if kind == "hierclr-pretrain" else "head."
            head = {k[len(hp):]: v for k, v in sd.items() if k.startswith(hp)}
            return kind, trunk, head
    for prefix in ("module.encoder_q.", "encoder_q."):
        if any(k.startswith(prefix) for k in keys):
            inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            trunk = {k: v for k, v in inner.items() if not k.startswith("fc.")}
            head = {k[3:]: v for k, v in inner.items() if k.startswith("fc.")}
            return "official-moco", trunk, head
    if any(k.startswith("module.") for k in keys):  # DDP-saved torchvision model
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if "conv1.weight" in sd:
        return "torchvision", {k: v for k, v in sd.items() if not k.startswith("fc.")}, {}
    raise CheckpointMismatchError(
        f"unrecognised checkpoint layout (first keys: {keys[:6]}): expected a torchvision ResNet state dict, a "
        "hierclr checkpoint, or an official MoCo-style checkpoint (module.encoder_q.*)")


def _strict_load(module: nn.Module, state: dict, what: str, source: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})")
        if shape:
            parts.append("shape mismatch " + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                       for k in shape[:4]))
        raise CheckpointMismatchError(f"{source}: the {what} does not fit: " + "; ".join(parts))
    module.load_state_dict(state)


def load_backbone(backbone: nn.Module, source: str | Path, *, head: nn.Module | None = None) -> str:
    """Load ``source``'s trunk into ``backbone`` (strict) and, with ``head``, its projection head.
    Returns the detected kind (``hierclr-pretrain``, ``hierclr-supervised``, ``torchvision``,
    ``official-moco``)."""
    kind, trunk, head_state = split_trunk_head(read_weights(source))
    _strict_load(backbone, trunk, "trunk", str(source))
    if head is not None:
        if not head_state:
            raise CheckpointMismatchError(f"{source}: a {kind} checkpoint has no projection head to load")
        _strict_load(head, head_state, "projection head", str(source))
    return kind
