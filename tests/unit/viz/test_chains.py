"""Prototype chains: they follow the tree, members match the assignments, upper rows show new ids; a real grid."""
from __future__ import annotations

import glob

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hierclr.clustering.prototypes import Prototypes, compose_assignments
from hierclr.data.builtin import DIGITS_GROUP_OF, DIGITS_GROUPS, materialize_builtin
from hierclr.data.source import open_source
from hierclr.viz import chains as chains_mod
from hierclr.viz.chains import chain_grid, chain_members, pick_chains


def _protos(level0: np.ndarray, parents=((0, 0, 1, 1, 2, 2), (0, 0, 1))) -> Prototypes:
    parents = tuple(torch.tensor(p) for p in parents)
    sizes = (len(parents[0]), *(len(p) for p in parents[1:]), int(parents[-1].max()) + 1)
    return Prototypes(centroids=tuple(torch.randn(m, 4) for m in sizes), parents=parents,
                      phi=tuple(torch.ones(m) for m in sizes),
                      assignments=compose_assignments(torch.tensor(level0), parents), epoch=1)


@pytest.fixture
def protos(rng) -> Prototypes:
    # level-0 prototype 5 is empty; level-1 prototype 2 holds only level-0 prototype 4; ids 0..2 unassigned
    base = _protos(rng.integers(0, 5, 60))
    a = base.assignments.clone()
    a[:3] = -1
    return Prototypes(base.centroids, base.parents, base.phi, a, epoch=1)


def test_chains_follow_parents_and_skip_empty_prototypes(protos):
    starts = set()
    for seed in range(40):
        for chain in pick_chains(protos, num_chains=2, seed=seed):
            assert len(chain) == 3
            assert chain[1] == int(protos.parents[0][chain[0]]) and chain[2] == int(protos.parents[1][chain[1]])
            starts.add(chain[0])
    assert starts == {0, 1, 2, 3, 4}  # every populated one turns up, the empty 5 never
    assert len(pick_chains(protos, num_chains=10)) == 5  # only 5 populated
    assert pick_chains(protos, num_chains=3, seed=7) == pick_chains(protos, num_chains=3, seed=7)
    empty = Prototypes(protos.centroids, protos.parents, protos.phi, torch.full((6, 3), -1), epoch=None)
    with pytest.raises(ValueError, match="no level-0 prototype has members"):
        pick_chains(empty)


def test_members_match_assignments_and_upper_levels_prefer_new_ids(protos):
    a = protos.assignments.numpy()
    chain = [0, 0, 0]
    members = chain_members(protos, chain, per_node=4, seed=1)
    assert [len(m) for m in members] == [4, 4, 4]
    for l, ids in enumerate(members):
        assert (a[ids, l] == chain[l]).all() and len(set(ids.tolist())) == len(ids)
    assert not set(members[1].tolist()) & set(members[0].tolist())  # level 1 shows other ids than level 0
    assert not set(members[2].tolist()) & (set(members[0].tolist()) | set(members[1].tolist()))
    again = chain_members(protos, chain, per_node=4, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(members, again))
    assert any(not np.array_equal(x, y) for x, y in zip(members, chain_members(protos, chain, per_node=4, seed=2)))
    # level-1 prototype 2 has no members besides level-0 prototype 4's: it falls back to those already shown
    n4 = int((a[:, 0] == 4).sum())
    deep = chain_members(protos, [4, 2, 1], per_node=n4)
    assert set(deep[1].tolist()) == set(deep[0].tolist()) == set(np.flatnonzero(a[:, 0] == 4).tolist())
    few = chain_members(protos, [4, 2, 1], per_node=n4 + 5)
    assert len(few[0]) == len(few[1]) == n4


def test_bad_chains_are_rejected(protos):
    with pytest.raises(ValueError, match="3 levels"):
        chain_members(protos, [0, 0])
    with pytest.raises(ValueError, match="parent of level-0 prototype 2 is 1, not 0"):
        chain_members(protos, [2, 0, 0])
    with pytest.raises(ValueError, match="outside level 1"):
        chain_members(protos, [0, 7, 0])


def test_chain_grid_on_builtin_digits(tmp_path, monkeypatch):
    root = materialize_builtin("builtin://digits/train", tmp_path / "builtin")
    src = open_source(root)
    table = pq.read_table(sorted(glob.glob(f"{root}/*.parquet")), columns=["id", "label"]).sort_by("id")
    digit = table.column("label").to_numpy()
    # level 0: the true digit; level 1: its shape group (the dataset's own hierarchy); level 2: one root
    protos = _protos(digit, parents=(DIGITS_GROUP_OF, (0, 0, 0)))
    captured = []
    real = chains_mod.image_grid
    monkeypatch.setattr(chains_mod, "image_grid", lambda rows, path, **kw: captured.append(rows) or real(rows, path, **kw))
    out = chain_grid(protos, src, tmp_path / "png" / "chain.png", num_chains=2, per_node=6, size=40)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    rows = captured[0]
    assert len(rows) == 6  # 2 chains x 3 levels, finest first
    label = rows[0][0]
    d = int(label.split("prototype ")[1].split(" ")[0])
    assert label == f"chain 0 · level 0 · prototype {d} · {int((digit == d).sum())} members · {d} (6/6)"
    assert rows[1][0].endswith(f"{DIGITS_GROUPS[DIGITS_GROUP_OF[d]]} (6/6)")  # the shape group at level 1
    assert all(img.shape == (40, 40, 3) and img.dtype == np.uint8 for _, imgs in rows for img in imgs)
    assert [len(imgs) for _, imgs in rows] == [6] * 6
