"""What one E-step did: per-level cluster sizes and phi, timings and row counts, for the trainer to report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hierclr.clustering.prototypes import Prototypes


@dataclass(frozen=True)
class LevelStats:
    """Cluster sizes (in images, clustered rows only) and phi of one level."""

    num_prototypes: int
    size_min: int
    size_median: float
    size_max: int
    empty_clusters: int
    phi_min: float
    phi_mean: float
    phi_max: float


@dataclass(frozen=True)
class EStepStats:
    """What one E-step did: row counts, timings (seconds, coordinator clock) and per-level stats.

    ``gather_s``: the K-means actors fetching the shards from the object store (last attempt);
    ``cluster_s``: K-means, phi, tree and assignments (last attempt); ``total_s``: from the last rank's
    submission to the result, retries included; ``attempts``: 2 when an actor failure was retried.
    """

    epoch: int
    num_rows: int
    num_clustered: int
    num_missing: int
    num_actors: int
    attempts: int
    gather_s: float
    cluster_s: float
    total_s: float
    levels: tuple[LevelStats, ...] = field(default=())

    def as_metrics(self, prefix: str = "estep/") -> dict[str, float]:
        """Flat ``{name: number}`` for ``ray.train.report``/MLflow, e.g. ``estep/level0/size_min``."""
        out = {
            f"{prefix}{k}": float(v)
            for k, v in asdict(self).items()
            if k not in ("levels", "epoch")
        }
        for lvl, s in enumerate(self.levels):
            out.update({f"{prefix}level{lvl}/{k}": float(v) for k, v in asdict(s).items()})
        return out


def level_stats(prototypes: Prototypes) -> tuple[LevelStats, ...]:
    """Per level: cluster sizes over the clustered rows (assignment >= 0), empty clusters, phi range."""
    a = prototypes.assignments.cpu()
    present = a[:, 0] >= 0
    out = []
    for lvl, m in enumerate(prototypes.sizes):
        counts = torch.bincount(a[present, lvl], minlength=m).numpy()
        phi = prototypes.phi[lvl].detach().cpu().double()
        out.append(LevelStats(
            num_prototypes=m, size_min=int(counts.min()), size_median=float(np.median(counts)),
            size_max=int(counts.max()), empty_clusters=int((counts == 0).sum()),
            phi_min=float(phi.min()), phi_mean=float(phi.mean()), phi_max=float(phi.max()),
        ))
    return tuple(out)
