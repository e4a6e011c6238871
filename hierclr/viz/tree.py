"""The prototype tree as plain JSON data: sizes, parents, members and concentration per level.

Column lists per level (``parent[i]``, ``members[i]``, ``phi[i]`` of prototype ``i``) rather than one
object per node: a 3000-2000-1000 tree stays a few hundred kB and loads straight into a dataframe.
"""
from __future__ import annotations

import math

import torch

from hierclr.clustering.prototypes import Prototypes

__all__ = ["member_counts", "prototype_tree"]

_PHI_DIGITS = 6


def member_counts(protos: Prototypes, level: int) -> torch.Tensor:
    """Dataset ids assigned to each prototype of ``level`` (zeros included; unassigned ids, -1, ignored)."""
    col = protos.assignments[:, level].detach().cpu()
    return torch.bincount(col[col >= 0], minlength=protos.sizes[level])


def prototype_tree(protos: Prototypes) -> dict:
    """``{"epoch", "num_levels", "sizes", "levels": [{"level", "num_prototypes", "parent", "members", "phi"}]}``.

    Level 0 is the finest. ``parent`` is ``None`` on the top level; ``phi`` is rounded to 6 digits and a
    non-finite value becomes ``None`` (so ``json.dumps`` writes strict JSON).
    """
    levels = []
    for l in range(protos.num_levels):
        parent = protos.parents[l].detach().cpu().tolist() if l < protos.num_levels - 1 else None
        phi = [round(x, _PHI_DIGITS) if math.isfinite(x) else None
               for x in protos.phi[l].detach().cpu().double().tolist()]
        levels.append({"level": l, "num_prototypes": protos.sizes[l], "parent": parent,
                       "members": member_counts(protos, l).tolist(), "phi": phi})
    return {"epoch": protos.epoch, "num_levels": protos.num_levels, "sizes": list(protos.sizes), "levels": levels}
