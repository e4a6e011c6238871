"""Prototypes: validation, immutability, persistence, device moves, truncation."""
import dataclasses

import pytest
import torch

from hierclr.clustering import Prototypes, compose_assignments


def make(num=10):
    g = torch.Generator().manual_seed(0)
    c0 = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    c1 = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    parents = [torch.tensor([0, 0, 1, 1, 2, 2])]
    a0 = torch.randint(0, 6, (num,), generator=g)
    return Prototypes([c0, c1], parents, [torch.full((6,), 0.2), torch.full((3,), 0.2)], compose_assignments(a0, parents), epoch=3)


def test_save_load_roundtrip_is_atomic(tmp_path):
    p = make()
    path = p.save(tmp_path / "sub" / "protos.pt")
    assert sorted(x.name for x in path.parent.iterdir()) == ["protos.pt"]  # no temp file left behind
    q = Prototypes.load(path)
    assert q.epoch == 3 and q.sizes == (6, 3)
    for a, b in zip(p.centroids + p.phi + p.parents + (p.assignments,), q.centroids + q.phi + q.parents + (q.assignments,)):
        assert torch.equal(a, b)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Prototypes.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        Prototypes.load(bad)


def test_immutable_and_to_device():
    p = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epoch = 5
    assert isinstance(p.centroids, tuple)
    q = p.to("cpu")
    assert q is not p and q.device.type == "cpu"


def test_composed_assignments_and_cluster_sizes():
    p = make(num=50)
    assert torch.equal(p.assignments[:, 1], p.parents[0][p.assignments[:, 0]])
    assert p.cluster_sizes(0).sum().item() == 50
    assert torch.equal(p.cluster_sizes(1), torch.bincount(p.assignments[:, 1], minlength=3))


def test_truncate_keeps_finest_levels():
    p = make().truncate(1)
    assert p.num_levels == 1 and p.parents == () and p.assignments.shape[1] == 1
    with pytest.raises(ValueError, match="num_levels"):
        make().truncate(3)


def test_validation_names_the_field():
    p = make()
    with pytest.raises(ValueError, match="parent maps"):
        Prototypes(p.centroids, [], p.phi, p.assignments)
    with pytest.raises(ValueError, match="phi"):
        Prototypes(p.centroids, p.parents, [p.phi[0], torch.ones(2)], p.assignments)
    with pytest.raises(ValueError, match="outside level 1"):
        Prototypes(p.centroids, [torch.tensor([0, 0, 1, 1, 2, 3])], p.phi, p.assignments)
    with pytest.raises(ValueError, match="assignments"):
        Prototypes(p.centroids, p.parents, p.phi, p.assignments[:, :1])
