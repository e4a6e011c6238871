"""Training checkpoints: what a resumed run needs to continue at the next epoch with identical state.

A checkpoint is a directory (what ``ray.train.report(checkpoint=...)`` persists to the run's storage):

    model.pt        MoCo state: both encoders, the queue, its ids and pointer
    optimizer.pt    SGD state (momentum buffers)
    prototypes.pt   the epoch's Prototypes (absent in warm-up / MoCo v2)
    state.json      epoch, per-epoch metric history, best kNN, MLflow run id, RNG states' file names
    rng.pt          torch / numpy / python RNG states of rank 0
    config.yaml     the resolved config
    COMPLETE        written last: a directory without it is an interrupted write and is never loaded

Every file is written to a temporary name and renamed, so a crash leaves either the old file or the new
one. Loading checks the marker and names the file that is missing or unreadable.
"""
from __future__ import annotations

import io
import json
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
FORMAT_VERSION = 1


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
    """Write ``state`` into ``directory`` (created), every file atomically, the marker last."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).unlink(missing_ok=True)
    write_atomic(d / "model.pt", _torch_bytes(state.model))
    write_atomic(d / "optimizer.pt", _torch_bytes(state.optimizer))
    if state.prototypes is not None:
        state.prototypes.to("cpu").save(d / "prototypes.pt")
    if state.rng is not None:
        write_atomic(d / "rng.pt", _torch_bytes(state.rng))
    write_atomic(d / "config.yaml", state.config.encode())
    meta = {"format": FORMAT_VERSION, "epoch": state.epoch, "history": state.history, "best": state.best,
            "mlflow_run_id": state.mlflow_run_id, "has_prototypes": state.prototypes is not None}
    write_atomic(d / "state.json", json.dumps(meta, indent=1).encode())
    write_atomic(d / MARKER, b"ok\n")
    return d


def read_state_json(directory: str | os.PathLike) -> dict:
    """The small ``state.json`` of a checkpoint (epoch, history, best, MLflow run id), after the marker check."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {d}")
    if not (d / MARKER).is_file():
        raise ValueError(f"checkpoint {d} is incomplete (no {MARKER} marker): it was interrupted while being written")
    try:
        return json.loads((d / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {d}: cannot read state.json: {e}") from None


def load_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> TrainingState:
    d = Path(directory)
    meta = read_state_json(d)

    def load(name: str, weights_only: bool = True):
        try:
            return torch.load(d / name, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise ValueError(f"checkpoint {d}: {name} is missing") from None
        except Exception as e:  # noqa: BLE001  torch.load raises many types for a corrupt file
            raise ValueError(f"checkpoint {d}: cannot read {name}: {e}") from None

    protos = Prototypes.load(d / "prototypes.pt") if meta.get("has_prototypes") else None
    rng = load("rng.pt", weights_only=False) if (d / "rng.pt").is_file() else None  # numpy/python tuples
    return TrainingState(
        epoch=int(meta["epoch"]), model=load("model.pt"), optimizer=load("optimizer.pt"), prototypes=protos,
        history=list(meta.get("history") or []), best=meta.get("best"), mlflow_run_id=meta.get("mlflow_run_id"),
        config=(d / "config.yaml").read_text() if (d / "config.yaml").is_file() else "", rng=rng,
    )


# ------------------------------------------------------------------------------------- finding them
def _local_dir(loc: Location) -> Path:
    if loc.uri.startswith(("s3://", "gs://")):
        raise ValueError(f"resuming from {loc.uri}: remote checkpoints are restored by Ray itself "
                         "(rerun with the same run name and `--resume latest`); a PATH must be local")
    return Path(loc.path)


def checkpoints_in(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every complete checkpoint in a Ray Train run directory, oldest first."""
    out = []
    root = Path(run_dir)
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("checkpoint_") and (d / MARKER).is_file():
            try:
                out.append((int(read_state_json(d)["epoch"]), d))
            except (ValueError, KeyError):
                continue
    return sorted(out, key=lambda t: (t[0], t[1].name))


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


def latest_run(storage_path: str | os.PathLike, name: str) -> str | None:
    """The newest run directory under ``storage_path`` for config name ``name`` that holds a checkpoint."""
    root = _local_dir(resolve(str(storage_path)))
    if not root.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(name)}(-\d{{8}}-\d{{6}}(-\d+)?)?$")
    runs = [d for d in root.iterdir() if d.is_dir() and pattern.match(d.name) and checkpoints_in(d)]
    # newest by the start time in the name (YYYYmmdd-HHMMSS sorts as text); a bare `name` counts as oldest
    return max(runs, key=lambda d: (d.name[len(name):], d.stat().st_mtime)).name if runs else None
