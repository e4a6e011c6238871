"""Load a ResNet trunk (and optionally a MoCo projection head) from the checkpoint kinds users have.

Five sources load into the same :func:`hierclr.models.backbones.build_backbone` trunk:

* a hierclr pretraining checkpoint directory (``model.pt``: MoCo state, ``encoder_q.backbone.*``), a hierclr
  run directory (its newest complete checkpoint) or a run's ``best_encoder.pt`` (``{"encoder_q": ...}``);
* a hierclr supervised checkpoint (``model.pt`` with ``backbone.*``, ``head.*``, ``classifier.*``) or a
  supervised run's ``best_model.pt`` (``{"model": ...}``);
* a torchvision ResNet state dict (``conv1.weight`` ... ``fc.weight``; the 1000-way ``fc`` is dropped);
* an official HCSC / PCL / MoCo checkpoint (``{"state_dict": {"module.encoder_q.conv1.weight", ...,
  "module.encoder_q.fc.0.weight", ...}}``): the trunk from ``encoder_q``, its ``fc`` MLP is the head;
* an MLflow run of hierclr: ``mlflow:<run_id>`` (its ``encoder_last`` model, else ``encoder_best``),
  ``mlflow:<run_id>/<model name>``, ``runs:/<run_id>/<model name>`` or a logged model's ``models:/<model_id>``.
  The encoders :meth:`hierclr.runtime.tracking.Tracker.log_encoder` logs are the bare trunk, so the loaded
  model's ``state_dict()`` has torchvision names (kind ``mlflow-model``). A run without a loadable model falls
  back to the checkpoints of its ``hierclr.run_dir`` tag (the newest checkpoint; ``best_encoder.pt`` /
  ``best_model.pt`` for ``<run_id>/encoder_best``). The store is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else
  ``sqlite:///mlflow.db`` in the working directory.

The trunk is loaded strictly: a missing or unexpected key raises :class:`CheckpointMismatchError` naming
them (the usual cause is a backbone / stem mismatch, e.g. ``resnet18`` weights into ``resnet50``).
"""
from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

log = logging.getLogger(__name__)

MLFLOW_PREFIXES = ("mlflow:", "runs:/", "models:/")
RUN_DIR_TAG = "hierclr.run_dir"
# tried in this order for `mlflow:<run_id>`: the last encoder, as the papers report (encoder_best is chosen by kNN
# on the val split, which the CIFAR presets set to the test split)
_MODEL_NAMES = ("encoder_last", "encoder_best")
EPOCH_TAG = "hierclr.epoch"  # on every logged encoder model: the epoch its weights are from
_WHICH = {"encoder_last": "last", "encoder_best": "best"}
_BEST_FILES = ("best_encoder.pt", "best_model.pt")


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


class SourceWeights(NamedTuple):
    """What :func:`read_source` found: the detected ``kind``, the trunk state (torchvision names, no ``fc``),
    the projection head state (may be empty), the whole flat state dict, ``origin``: what was read (the file or
    checkpoint directory, or for MLflow sources the ``models:/`` URI or the run's checkpoint), the ``epoch`` its
    weights are from and ``which``: ``last`` (a run's newest checkpoint, ``encoder_last``) or ``best``
    (``best_*.pt``, ``encoder_best``); None where the source does not say."""

    kind: str
    trunk: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    origin: str
    epoch: int | None = None
    which: str | None = None


class _Read(NamedTuple):
    state: dict[str, torch.Tensor]
    origin: str
    epoch: int | None = None
    which: str | None = None


def is_mlflow_source(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(MLFLOW_PREFIXES)


def read_source(source: str | Path, *, tracking_uri: str | None = None) -> SourceWeights:
    """Read ``source`` (any kind this module loads) and split it into trunk and head."""
    if is_mlflow_source(source):
        read, from_model = _read_mlflow(str(source), tracking_uri=tracking_uri)
    else:
        read, from_model = _read_local(source), False
    kind, trunk, head = split_trunk_head(read.state)
    return SourceWeights("mlflow-model" if from_model else kind, trunk, head, read.state, read.origin, read.epoch,
                         read.which)


def read_weights(source: str | Path, *, tracking_uri: str | None = None) -> dict[str, torch.Tensor]:
    """The flat state dict behind ``source`` (file, hierclr checkpoint / run directory, or MLflow source)."""

    if is_mlflow_source(source):
        return _read_mlflow(str(source), tracking_uri=tracking_uri)[0].state
    return _read_local(source).state


def _read_local(source: str | Path) -> _Read:
    from hierclr.io.checkpoint import latest_checkpoint, read_checkpoint_file, read_state_json
    from hierclr.io.fs import resolve

    text = str(source)
    loc = resolve(text)
    if loc.is_dir():
        ckpt = latest_checkpoint(text)  # the newest checkpoint whose files match its state.json
        state = _flatten(_torch_load(read_checkpoint_file(ckpt, "model.pt"), f"{ckpt}/model.pt"))
        named = Path(ckpt).resolve() == Path(loc.path).resolve()  # a checkpoint given itself, not a run directory
        return _Read(state, str(ckpt), int(read_state_json(ckpt)["epoch"]), None if named else "last")
    if not loc.exists():
        raise FileNotFoundError(f"model.init: {text} does not exist")
    raw = _torch_load(loc.read_bytes(), text)
    epoch = raw.get("epoch")
    return _Read(_flatten(raw), text, epoch if isinstance(epoch, int) else None,
                 "best" if Path(loc.path).name in _BEST_FILES else None)


def _flatten(obj: dict) -> dict[str, torch.Tensor]:
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # official MoCo / PCL / HCSC files
        obj = obj["state_dict"]
    if "encoder_q" in obj and isinstance(obj["encoder_q"], dict):  # hierclr best_encoder.pt
        obj = {f"encoder_q.{k}": v for k, v in obj["encoder_q"].items()}
    if "model" in obj and isinstance(obj["model"], dict):  # hierclr supervised best_model.pt
        obj = obj["model"]
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


def _strict_load(module: nn.Module, state: dict, what: str, source: str, *, assign: bool = False) -> None:
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
    module.load_state_dict(state, assign=assign)


def load_backbone(backbone: nn.Module, source: str | Path, *, head: nn.Module | None = None,
                  tracking_uri: str | None = None) -> str:
    """Load ``source``'s trunk into ``backbone`` (strict) and, with ``head``, its projection head.
    Returns the detected kind (``hierclr-pretrain``, ``hierclr-supervised``, ``torchvision``,
    ``official-moco``, ``mlflow-model``). ``tracking_uri``: the MLflow store of an MLflow source."""
    found = read_source(source, tracking_uri=tracking_uri)
    kind, trunk, head_state = found.kind, found.trunk, found.head
    _strict_load(backbone, trunk, "trunk", str(source))
    if head is not None:
        if not head_state:
            raise CheckpointMismatchError(f"{source}: a {kind} checkpoint has no projection head to load")
        _strict_load(head, head_state, "projection head", str(source))
    return kind


# ----------------------------------------------------------------------------------------------- MLflow
def parse_mlflow_source(source: str) -> tuple[str, str | None]:
    """``mlflow:<run_id>[/<name>]`` / ``runs:/<run_id>/<name>`` -> ``(run_id, name or None)``."""
    text = source.removeprefix("mlflow:") if source.startswith("mlflow:") else source.removeprefix("runs:/")
    run_id, _, name = text.strip("/").partition("/")
    if not re.fullmatch(r"[0-9A-Za-z_\-]+", run_id) or (name and not re.fullmatch(r"[\w.\-]+", name)):
        raise ValueError(f"{source}: expected mlflow:<run_id>, mlflow:<run_id>/<model name> or "
                         "runs:/<run_id>/<model name>")
    return run_id, name or None


def tracking_store(tracking_uri: str | None = None) -> str:
    """The MLflow store to read: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``;
    a relative local store made absolute. A sqlite file that does not exist raises (MLflow would create an
    empty one)."""
    from hierclr.io.mlflow_store import DEFAULT_TRACKING_URI, resolved_uri

    uri = resolved_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].partition("?")[0]
        if path not in ("", ":memory:") and not Path(path).is_file():
            raise ValueError(f"no MLflow store at {uri}: the database file does not exist (pass the tracking "
                             "URI: tracking_uri= / --tracking-uri, or set MLFLOW_TRACKING_URI)")
    return uri


def _logged(model) -> tuple[int | None, str | None]:
    """(epoch, last / best) of a logged encoder model, from its ``hierclr.epoch`` tag and its name."""
    epoch = (model.tags or {}).get(EPOCH_TAG)
    return (int(epoch) if epoch is not None and epoch.lstrip("-").isdigit() else None), _WHICH.get(model.name)


def _read_mlflow(source: str, *, tracking_uri: str | None = None) -> tuple[_Read, bool]:
    """``(what was read, from_model)`` for an MLflow source: the logged model's ``state_dict()`` (``from_model``
    True), else the checkpoint of the run's ``hierclr.run_dir`` tag. Raises ValueError naming the run and the
    store when the run does not exist or has neither."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from hierclr.io.mlflow_store import RUN_HTTP, http_settings

    uri = tracking_store(tracking_uri)
    if source.startswith("models:/"):
        state = _load_logged_model(source, uri)
        try:
            found = _logged(MlflowClient(tracking_uri=uri).get_logged_model(source[len("models:/"):].split("/")[0]))
        except Exception:  # noqa: BLE001  a registered-model URI, or a store without logged models: no provenance
            found = (None, None)
        return _Read(state, source, *found), True
    run_id, name = parse_mlflow_source(source)
    names = (name,) if name else _MODEL_NAMES
    client = MlflowClient(tracking_uri=uri)
    with http_settings(RUN_HTTP, override=False):
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ValueError(f"MLflow run {run_id} not found in the tracking store {uri}") from None
            raise ValueError(f"MLflow run {run_id} at {uri}: {err.message}") from None
        models = _run_models(client, run)
    problems = []
    for n in names:
        model = models.get(n)
        if model is None:
            continue
        model_uri = f"models:/{model.model_id}"
        try:
            return _Read(_load_logged_model(model_uri, uri), model_uri, *_logged(model)), True
        except Exception as err:  # noqa: BLE001  any load failure: fall back to the run's checkpoints
            problems.append(f"{n} ({model_uri}) does not load: {' '.join(str(err).split())[:300]}")
            log.warning("MLflow run %s: %s", run_id, problems[-1])
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if run_dir:
        found = _run_dir_weights(run_dir, names)
        if found is not None:
            log.info("MLflow run %s: no loadable %s model; read %s (its %s tag)", run_id, "/".join(names),
                     found.origin, RUN_DIR_TAG)
            return found, False
        problems.append(f"its {RUN_DIR_TAG} {run_dir} holds no checkpoint")
    have = ", ".join(sorted(models)) or "none"
    raise ValueError(f"MLflow run {run_id} in the tracking store {uri} has no encoder model "
                     f"{' / '.join(names)} (logged models: {have})" + (f"; {'; '.join(problems)}" if problems else "")
                     + ("" if run_dir else f"; and no {RUN_DIR_TAG} tag to fall back to its checkpoints"))


def _run_models(client, run) -> dict:
    """The newest READY logged model of each name whose source run is ``run``."""
    from mlflow.entities import LoggedModelStatus

    found, token = {}, None
    while True:
        page = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'",
            order_by=[{"field_name": "creation_time", "ascending": False}], page_token=token)
        for m in page:
            if m.status == LoggedModelStatus.READY:
                found.setdefault(m.name, m)
        token = page.token
        if not token:
            return found


def _load_logged_model(model_uri: str, uri: str) -> dict[str, torch.Tensor]:
    import mlflow.pytorch

    from hierclr.io.mlflow_store import global_tracking_uri

    with global_tracking_uri(uri):
        try:
            module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
        except Exception as err:
            if model_uri.startswith("models:/") and "RESOURCE_DOES_NOT_EXIST" in str(err):
                raise ValueError(f"MLflow model {model_uri} not found in the tracking store {uri}") from None
            raise
    if not isinstance(module, nn.Module):
        raise ValueError(f"MLflow model {model_uri} is a {type(module).__name__}, not a torch module")  # noqa: TRY004
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def _run_dir_weights(run_dir: str, names: tuple[str, ...]) -> _Read | None:
    from hierclr.io.fs import resolve

    loc = resolve(run_dir)
    best = [loc.join(f) for f in _BEST_FILES] if "encoder_best" in names else []

    def best_file():
        for c in best:
            if c.is_file():
                return _read_local(c.uri)
        return None

    if names[0] == "encoder_best" and (found := best_file()) is not None:
        return found
    try:
        return _read_local(run_dir)  # the newest checkpoint: the last encoder
    except (ValueError, FileNotFoundError) as err:
        log.warning("MLflow fallback to %s failed: %s", run_dir, err)
    return best_file()
