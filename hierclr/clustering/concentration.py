"""Per-prototype concentration phi, the cluster temperature of HCSC Eq. 3 (PCL's "density")."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hierclr.clustering.arrays import as_numpy
from hierclr.clustering.settings import DEFAULTS


def concentration(
    points,
    centroids,
    assignments,
    *,
    temperature: float = DEFAULTS.temperature,
    smooth: float = DEFAULTS.smooth,
) -> Tensor:
    """Concentration phi of every cluster, HCSC Eq. 3 as the reference code computes it.

    ``phi_c = mean_{z in Z_c} ||z - c||_2 / log(|Z_c| + smooth)`` for clusters with more than one
    member; clusters with at most one member (empty ones included) get the largest phi of the
    others; phi is then clipped to its [10th, 90th] percentile (numpy's linear interpolation) and
    rescaled so that ``mean(phi) == temperature``.

    Args:
        points: ``(N, d)`` members (images at level 0, child centroids above).
        centroids: ``(M, d)`` the un-normalised centroids the distances are measured to.
        assignments: ``(N,)`` cluster id of each point, in ``[0, M)``.

    If no cluster has a usable spread (every cluster has <= 1 member, or all distances are 0),
    phi carries no information and every prototype gets ``temperature`` (the mean it would be
    rescaled to anyway) instead of a division by zero.
    """
    if temperature <= 0:
        raise ValueError(f"concentration: temperature must be > 0, got {temperature}")
    if smooth <= 0:
        raise ValueError(f"concentration: smooth must be > 0 (log(Z + smooth) > 0 needs it), got {smooth}")
    x = as_numpy(points, np.float64, "points")
    c = as_numpy(centroids, np.float64, "centroids")
    a = as_numpy(assignments, np.int64, "assignments")
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"concentration: points {x.shape} and centroids {c.shape} must be (N, d) and (M, d)")
    if a.shape != (x.shape[0],):
        raise ValueError(f"concentration: assignments shape {a.shape} does not match {x.shape[0]} points")
    M = c.shape[0]
    if a.size and (a.min() < 0 or a.max() >= M):
        raise ValueError(f"concentration: assignments must lie in [0, {M})")
    dist = np.linalg.norm(x - c[a], axis=1)
    return concentration_from_distances(dist, a, M, temperature=temperature, smooth=smooth)


def concentration_from_distances(
    distances,
    assignments,
    num_clusters: int,
    *,
    temperature: float = DEFAULTS.temperature,
    smooth: float = DEFAULTS.smooth,
) -> Tensor:
    """As :func:`concentration`, from each point's (non-squared) L2 distance to its centroid."""
    d = as_numpy(distances, np.float64, "distances")
    a = as_numpy(assignments, np.int64, "assignments")
    counts = np.bincount(a, minlength=num_clusters).astype(np.float64)
    sums = np.bincount(a, weights=d, minlength=num_clusters)
    phi = np.zeros(num_clusters, dtype=np.float64)
    spread = counts > 1
    phi[spread] = (sums[spread] / counts[spread]) / np.log(counts[spread] + smooth)
    if spread.any():
        phi[~spread] = phi[spread].max()
        phi = np.clip(phi, np.percentile(phi, 10), np.percentile(phi, 90))
    if phi.mean() <= 0:
        return torch.full((num_clusters,), float(temperature), dtype=torch.float32)
    phi = temperature * phi / phi.mean()
    return torch.from_numpy(phi.astype(np.float32))
