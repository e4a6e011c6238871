"""The prototype tree as JSON columns: sizes, parents, member counts and rounded phi from a hand-built tree."""
from __future__ import annotations

import json
import math

import torch

from hierclr.clustering.prototypes import Prototypes
from hierclr.viz.tree import prototype_tree


def _protos(phi0=(0.1234567891, 0.2, 0.3, 0.4), epoch=7) -> Prototypes:
    # level 0: 4 prototypes -> level 1: 2; ids 0..6, id 5 unassigned, prototype 3 empty
    level0 = [0, 0, 1, 2, 2, -1, 0]
    level1 = [0, 0, 0, 1, 1, -1, 0]
    return Prototypes(
        centroids=(torch.eye(4)[:, :3], torch.eye(3)[:2]),
        parents=(torch.tensor([0, 0, 1, 1]),),
        phi=(torch.tensor(phi0, dtype=torch.float64), torch.tensor([0.5, 0.25])),
        assignments=torch.tensor([level0, level1]).T.contiguous(),
        epoch=epoch,
    )


def test_columns_per_level():
    tree = prototype_tree(_protos())
    assert tree["epoch"] == 7 and tree["num_levels"] == 2 and tree["sizes"] == [4, 2]
    l0, l1 = tree["levels"]
    assert l0 == {"level": 0, "num_prototypes": 4, "parent": [0, 0, 1, 1], "members": [3, 1, 2, 0],
                  "phi": [0.123457, 0.2, 0.3, 0.4]}
    assert l1 == {"level": 1, "num_prototypes": 2, "parent": None, "members": [4, 2], "phi": [0.5, 0.25]}


def test_json_round_trip_and_non_finite_phi():
    tree = prototype_tree(_protos(phi0=(0.1, math.nan, math.inf, 0.4), epoch=None))
    text = json.dumps(tree, allow_nan=False)  # strict JSON
    back = json.loads(text)
    assert back == tree
    assert back["epoch"] is None and back["levels"][0]["phi"] == [0.1, None, None, 0.4]
    single = prototype_tree(_protos().truncate(1))
    assert single["num_levels"] == 1 and single["levels"][0]["parent"] is None
    assert json.loads(json.dumps(single)) == single
