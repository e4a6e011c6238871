"""Training checkpoints: what a resumed run needs to continue at the next epoch with identical state.

A checkpoint is a directory (what ``ray.train.report(checkpoint=...)`` persists to the run's storage):

    model.pt        MoCo state: both encoders, the queue, its ids and pointer
    optimizer.pt    SGD state (momentum buffers)
    prototypes.pt   the epoch's Prototypes (absent in warm-up / MoCo v2)
    state.json      epoch, per-epoch metric history, best kNN, MLflow run id, and ``files``: the size and
                    sha256 of every other file
    rng.pt          torch / numpy / python RNG states of rank 0
    config.yaml     the resolved config
    COMPLETE        written last: a directory without it is an interrupted write and is never loaded

Every file is written to a temporary name and renamed, so a crash leaves either the old file or the new
one. The marker alone is not enough: Ray copies the files to the run's storage on several threads, and a disk
that filled during the copy left ``COMPLETE`` and ``state.json`` beside a ``model.pt`` of 47 of 93 MB
(issue 18). So every reader checks the files against ``state.json``: listing and finding checkpoints
(:func:`checkpoints_in`, :func:`latest_checkpoint`) compares sizes (a ``stat`` per file), loading
(:func:`load_checkpoint`, :func:`read_checkpoint_file`) also the sha256 of the bytes it reads. A checkpoint that
fails is never loaded (:class:`BrokenCheckpointError` names the file and what is wrong); the finders skip it
with a warning, and :func:`quarantine_broken` moves it aside (``--resume latest`` does, before Ray starts).
Checkpoints written before the manifest existed (format 1) are checked by their marker only.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hierclr.clustering.prototypes import Prototypes
from hierclr.io.atomic import write_atomic
from hierclr.io.fs import Location, resolve

MARKER = "COMPLETE"
FORMAT_VERSION = 2  # 2: state.json lists every file's size and sha256
QUARANTINE = "quarantine"  # broken checkpoints of a run are moved to <run_dir>/quarantine/
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it restores from

log = logging.getLogger(__name__)


class BrokenCheckpointError(ValueError):
    """A checkpoint directory whose files do not match its ``state.json`` (or lack the marker); the message
    names the directory, the file and what is wrong."""


@dataclass
class TrainingState:
    """Everything saved at the end of ``epoch`` (the last finished epoch)."""

    epoch: int
    model: dict
    optimizer: dict
    prototypes: Prototypes | None = None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"epoch": e, "knn_top1": x}
    mlflow_run_id: str | None = None
    config: str = ""  # resolved config YAML
    rng: dict | None = None

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(directory: str | os.PathLike, state: TrainingState) -> Path:
    """Write ``state`` into ``directory`` (created), every file atomically, then ``state.json`` with every file's
    size and sha256, the marker last."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).unlink(missing_ok=True)
    parts = {"model.pt": _torch_bytes(state.model), "optimizer.pt": _torch_bytes(state.optimizer)}
    if state.prototypes is not None:
        parts["prototypes.pt"] = _torch_bytes(state.prototypes.to("cpu").state_dict())  # = Prototypes.save
    if state.rng is not None:
        parts["rng.pt"] = _torch_bytes(state.rng)
    parts["config.yaml"] = state.config.encode()
    for name in ("prototypes.pt", "rng.pt"):
        if name not in parts:
            (d / name).unlink(missing_ok=True)  # a rewritten checkpoint keeps no part of the old one
    files = {}
    for name, data in parts.items():
        write_atomic(d / name, data)
        files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta = {"format": FORMAT_VERSION, "epoch": state.epoch, "history": state.history, "best": state.best,
            "mlflow_run_id": state.mlflow_run_id, "has_prototypes": state.prototypes is not None, "files": files}
    write_atomic(d / "state.json", json.dumps(meta, indent=1).encode())
    write_atomic(d / MARKER, b"ok\n")
    return d


def read_state_json(directory: str | os.PathLike) -> dict:
    """The small ``state.json`` of a checkpoint (epoch, history, best, MLflow run id), after the marker check and
    a check of every listed file's size (:class:`BrokenCheckpointError` on a mismatch)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {d}")
    if not (d / MARKER).is_file():
        raise BrokenCheckpointError(f"checkpoint {d} is incomplete (no {MARKER} marker): it was interrupted while "
                                    "being written")
    try:
        meta = json.loads((d / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BrokenCheckpointError(f"checkpoint {d}: cannot read state.json: {e}") from None
    for name, want in (meta.get("files") or {}).items():
        try:
            size = (d / name).stat().st_size
        except FileNotFoundError:
            raise BrokenCheckpointError(f"checkpoint {d} is broken: {name} is missing") from None
        if size != want["size"]:
            raise BrokenCheckpointError(f"checkpoint {d} is broken: {name} has {size} of {want['size']} bytes "
                                        "(an interrupted copy, or a full disk)")
    return meta


def read_checkpoint_file(directory: str | os.PathLike, name: str, meta: dict | None = None) -> bytes:
    """The bytes of one file of a checkpoint, checked against the size and sha256 in its ``state.json``."""
    d = Path(directory)
    meta = read_state_json(d) if meta is None else meta
    try:
        data = (d / name).read_bytes()
    except FileNotFoundError:
        raise BrokenCheckpointError(f"checkpoint {d}: {name} is missing") from None
    want = (meta.get("files") or {}).get(name)
    if want is not None and hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise BrokenCheckpointError(f"checkpoint {d} is broken: {name} does not match its sha256 in state.json "
                                    "(changed or damaged after it was written)")
    return data


def load_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> TrainingState:
    """The whole checkpoint, every file checked against ``state.json`` (:class:`BrokenCheckpointError`)."""
    d = Path(directory)
    meta = read_state_json(d)

    def load(name: str, weights_only: bool = True):
        data = read_checkpoint_file(d, name, meta)
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
        except Exception as e:  # noqa: BLE001  torch.load raises many types for a corrupt file
            raise BrokenCheckpointError(f"checkpoint {d}: cannot read {name}: {e}") from None

    protos = Prototypes.from_state_dict(load("prototypes.pt")) if meta.get("has_prototypes") else None
    rng = load("rng.pt", weights_only=False) if (d / "rng.pt").is_file() else None  # numpy/python tuples
    config = read_checkpoint_file(d, "config.yaml", meta).decode() if (d / "config.yaml").is_file() else ""
    return TrainingState(
        epoch=int(meta["epoch"]), model=load("model.pt"), optimizer=load("optimizer.pt"), prototypes=protos,
        history=list(meta.get("history") or []), best=meta.get("best"), mlflow_run_id=meta.get("mlflow_run_id"),
        config=config, rng=rng,
    )


# ------------------------------------------------------------------------------------- finding them
def _local_dir(loc: Location) -> Path:
    if loc.uri.startswith(("s3://", "gs://")):
        raise ValueError(f"resuming from {loc.uri}: remote checkpoints are restored by Ray itself "
                         "(rerun with the same run name and `--resume latest`); a PATH must be local")
    return Path(loc.path)


def _scan(run_dir: Path) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
    """(complete checkpoints as ``(epoch, path)``, broken ones as ``(path, why)``) of a run directory."""
    good, broken = [], []
    if not run_dir.is_dir():
        return good, broken
    for d in run_dir.iterdir():
        if d.is_dir() and d.name.startswith("checkpoint_"):
            try:
                good.append((int(read_state_json(d)["epoch"]), d))
            except (ValueError, KeyError) as e:
                broken.append((d, str(e)))
    return sorted(good, key=lambda t: (t[0], t[1].name)), sorted(broken)


def checkpoints_in(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every complete checkpoint in a Ray Train run directory, oldest first; a broken one
    (no marker, a file missing or of the wrong size) is left out with a warning naming it."""
    good, broken = _scan(Path(run_dir))
    for d, why in broken:
        if (d / MARKER).is_file():  # without the marker it may be a write in progress: not worth a warning
            log.warning("skipping a broken checkpoint: %s", why)
    return good


def ray_checkpoint_names(run_dir: str | os.PathLike) -> tuple[set[str], str | None]:
    """(every checkpoint directory Ray Train's snapshot of ``run_dir`` lists, the latest of them); Ray restores a
    run from its latest one. Empty when there is no snapshot."""
    try:
        snap = json.loads(Path(run_dir, RAY_SNAPSHOT).read_text())
    except (OSError, json.JSONDecodeError):
        return set(), None
    names = {r["checkpoint_dir_name"] for r in snap.get("checkpoint_results") or [] if "checkpoint_dir_name" in r}
    latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return names | ({latest} if latest else set()), latest


def quarantine_broken(run_dir: str | os.PathLike) -> list[Path]:
    """Move every broken checkpoint of ``run_dir`` (marker written, files not matching ``state.json``) to
    ``<run_dir>/quarantine/``, so that no reader meets it again; returns where they went. A checkpoint that Ray
    Train's snapshot lists stays (Ray refuses a run whose recorded checkpoints are gone); a directory without the
    marker stays too (it may be a write in progress). Call it only on a run no process is writing."""
    root = Path(run_dir)
    listed, _ = ray_checkpoint_names(root)
    moved = []
    for d, why in _scan(root)[1]:
        if d.name in listed or not (d / MARKER).is_file():
            continue
        target = root / QUARANTINE / d.name
        target.parent.mkdir(exist_ok=True)
        os.replace(d, target)
        log.warning("moved a broken checkpoint to %s: %s", target, why)
        moved.append(target)
    return moved


def latest_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a checkpoint, else the newest complete checkpoint in the run dir ``path``."""
    p = _local_dir(resolve(str(path)))
    if (p / "state.json").exists() or (p / MARKER).exists():
        read_state_json(p)  # raises on an incomplete one
        return p
    found = checkpoints_in(p)
    if not found:
        raise ValueError(f"--resume {path}: no complete checkpoint there (expected a checkpoint directory "
                         "or a run directory holding checkpoint_* directories)")
    return found[-1][1]


def check_ray_latest(run_dir: str | os.PathLike) -> None:
    """Before Ray Train restores ``run_dir`` (``--resume latest``): the checkpoint its snapshot names as the latest
    must be intact, else a :class:`BrokenCheckpointError` that names it and the newest intact one to continue
    from instead (``--resume PATH`` starts a new run directory from it)."""
    _, latest = ray_checkpoint_names(run_dir)
    if latest is None or not Path(run_dir, latest).is_dir():
        return
    try:
        read_state_json(Path(run_dir, latest))
    except BrokenCheckpointError as e:
        good = checkpoints_in(run_dir)
        hint = (f"continue from the newest intact one with --resume {good[-1][1]}" if good else
                "the run has no intact checkpoint; start it again")
        raise BrokenCheckpointError(f"{e}; Ray Train would restore the run from it: {hint}") from None


def latest_run(storage_path: str | os.PathLike, name: str) -> str | None:
    """The newest run directory under ``storage_path`` for config name ``name`` that holds a checkpoint."""
    root = _local_dir(resolve(str(storage_path)))
    if not root.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(name)}(?:-(\d{{8}}-\d{{6}})(?:-(\d+))?)?$")
    runs = [(m, d) for d in root.iterdir() if d.is_dir() and (m := pattern.match(d.name)) and checkpoints_in(d)]
    # newest by the start time in the name (YYYYmmdd-HHMMSS sorts as text), then by the number of a run started
    # in the same second (-2, -3, ..., -10 by value); a bare `name` counts as oldest
    newest = max(runs, key=lambda t: (t[0].group(1) or "", int(t[0].group(2) or 1), t[1].stat().st_mtime),
                 default=None)
    return newest[1].name if newest else None
