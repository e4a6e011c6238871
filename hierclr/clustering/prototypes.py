"""The hierarchical prototypes of one epoch: a tree of L2-normalised centroids (HCSC Alg. 1)."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hierclr.io.atomic import write_atomic

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Prototypes:
    """Hierarchical prototypes, fixed for one epoch (HCSC Sec. 4.2 and 5.1).

    Level 0 is the finest (e.g. 3000 prototypes), level ``L - 1`` the coarsest.

    Attributes:
        centroids: per level, an ``(M_l, d)`` float tensor of L2-normalised prototypes ``C_l``.
        parents: ``L - 1`` long tensors; ``parents[l][i]`` is the level-``l+1`` prototype that
            level-``l`` prototype ``i`` belongs to (the tree's edges, Alg. 1).
        phi: per level, the ``(M_l,)`` concentration (temperature) of each prototype (Eq. 3).
        assignments: ``(N, L)`` long; row ``i`` holds dataset id ``i``'s prototype per level,
            composed through the tree (``assignments[:, l+1] == parents[l][assignments[:, l]]``).
        epoch: the epoch these prototypes were computed for (``None`` outside training).
    """

    centroids: tuple[Tensor, ...]
    parents: tuple[Tensor, ...]
    phi: tuple[Tensor, ...]
    assignments: Tensor
    epoch: int | None = field(default=None)

    def __post_init__(self) -> None:
        # Freeze the containers too: lists handed in by the caller become tuples.
        object.__setattr__(self, "centroids", tuple(self.centroids))
        object.__setattr__(self, "parents", tuple(self.parents))
        object.__setattr__(self, "phi", tuple(self.phi))
        self._validate()

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        L = len(self.centroids)
        if L == 0:
            raise ValueError("Prototypes need at least one level of centroids")
        if len(self.phi) != L:
            raise ValueError(f"Prototypes: {len(self.phi)} phi tensors for {L} levels")
        if len(self.parents) != L - 1:
            raise ValueError(f"Prototypes: {len(self.parents)} parent maps for {L} levels (need {L - 1})")
        d = self.centroids[0].shape[-1]
        for l, (c, p) in enumerate(zip(self.centroids, self.phi)):
            if c.dim() != 2 or c.shape[1] != d:
                raise ValueError(f"Prototypes: centroids[{l}] has shape {tuple(c.shape)}, expected (M, {d})")
            if p.shape != (c.shape[0],):
                raise ValueError(f"Prototypes: phi[{l}] has shape {tuple(p.shape)}, expected ({c.shape[0]},)")
        for l, par in enumerate(self.parents):
            if par.shape != (self.centroids[l].shape[0],) or par.dtype != torch.long:
                raise ValueError(
                    f"Prototypes: parents[{l}] must be a long tensor of shape ({self.centroids[l].shape[0]},), "
                    f"got {par.dtype} {tuple(par.shape)}"
                )
            if par.numel() and (int(par.min()) < 0 or int(par.max()) >= self.centroids[l + 1].shape[0]):
                raise ValueError(f"Prototypes: parents[{l}] points outside level {l + 1}")
        a = self.assignments
        if a.dim() != 2 or a.shape[1] != L or a.dtype != torch.long:
            raise ValueError(f"Prototypes: assignments must be a long (N, {L}) tensor, got {a.dtype} {tuple(a.shape)}")

    # --------------------------------------------------------------- accessors
    @property
    def num_levels(self) -> int:
        return len(self.centroids)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of prototypes per level, finest first."""
        return tuple(int(c.shape[0]) for c in self.centroids)

    @property
    def num_samples(self) -> int:
        return int(self.assignments.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids[0].shape[1])

    @property
    def device(self) -> torch.device:
        return self.centroids[0].device

    def cluster_sizes(self, level: int) -> Tensor:
        """Number of samples assigned to each prototype of ``level`` (zeros included)."""
        return torch.bincount(self.assignments[:, level], minlength=self.sizes[level])

    def to(self, device: torch.device | str) -> Prototypes:
        """A copy on ``device`` (the object itself is immutable)."""
        move = lambda ts: tuple(t.to(device) for t in ts)
        return Prototypes(
            centroids=move(self.centroids),
            parents=move(self.parents),
            phi=move(self.phi),
            assignments=self.assignments.to(device),
            epoch=self.epoch,
        )

    def truncate(self, num_levels: int) -> Prototypes:
        """The finest ``num_levels`` levels only (e.g. 1 for the single-level ablation)."""
        if not 1 <= num_levels <= self.num_levels:
            raise ValueError(f"truncate: num_levels must be in [1, {self.num_levels}], got {num_levels}")
        return Prototypes(
            centroids=self.centroids[:num_levels],
            parents=self.parents[: num_levels - 1],
            phi=self.phi[:num_levels],
            assignments=self.assignments[:, :num_levels],
            epoch=self.epoch,
        )

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Plain tensors and ints, CPU, loadable with ``torch.load(weights_only=True)``."""
        return {
            "format_version": _FORMAT_VERSION,
            "centroids": [c.detach().cpu() for c in self.centroids],
            "parents": [p.detach().cpu() for p in self.parents],
            "phi": [p.detach().cpu() for p in self.phi],
            "assignments": self.assignments.detach().cpu(),
            "epoch": -1 if self.epoch is None else int(self.epoch),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Prototypes:
        version = state.get("format_version")
        if version != _FORMAT_VERSION:
            raise ValueError(f"Prototypes: unsupported format_version {version!r} (expected {_FORMAT_VERSION})")
        epoch = int(state["epoch"])
        return cls(
            centroids=state["centroids"],
            parents=state["parents"],
            phi=state["phi"],
            assignments=state["assignments"],
            epoch=None if epoch < 0 else epoch,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename), so a crash never leaves a half-written file."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Prototypes:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Prototypes file not found: {path}")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # corrupt or foreign file: name it
            raise ValueError(f"Prototypes: cannot read {path}: {e}") from e
        return cls.from_state_dict(state)


def compose_assignments(level0: Tensor, parents: Sequence[Tensor]) -> Tensor:
    """``(N, L)`` assignments from level-0 labels composed through the tree (spec E-step 3)."""
    cols = [level0]
    for par in parents:
        cols.append(par[cols[-1]])
    return torch.stack(cols, dim=1)
