"""hierarchical_kmeans: recovers a planted 3-level hierarchy, is deterministic, composes the tree."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score

from hierclr.clustering import KMeansSettings, concentration, hierarchical_kmeans


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_recovers_planted_hierarchy(planted, backend):
    points, labels = planted  # 48 leaves -> 12 groups -> 4 tops
    protos = hierarchical_kmeans(points, [48, 12, 4], KMeansSettings(backend=backend))
    assert protos.sizes == (48, 12, 4)
    for level in range(3):
        ami = adjusted_mutual_info_score(labels[:, level], protos.assignments[:, level].numpy())
        assert ami >= 0.9, f"level {level}: AMI {ami:.3f}"


def test_same_seed_same_prototypes(planted):
    points, _ = planted
    a = hierarchical_kmeans(points, [30, 10, 4], KMeansSettings(nredo=2, seed=7))
    b = hierarchical_kmeans(points, [30, 10, 4], KMeansSettings(nredo=2, seed=7))
    for x, y in zip(a.centroids + a.phi + a.parents, b.centroids + b.phi + b.parents):
        assert torch.equal(x, y)
    assert torch.equal(a.assignments, b.assignments)


def test_structure_of_the_result(planted):
    points, _ = planted
    p = hierarchical_kmeans(points, [40, 20, 5], KMeansSettings(nredo=1, temperature=0.3), epoch=4)
    assert p.epoch == 4 and p.num_samples == len(points) and p.dim == points.shape[1]
    for c in p.centroids:
        torch.testing.assert_close(c.norm(dim=1), torch.ones(c.shape[0]))
    for phi in p.phi:
        assert phi.mean().item() == pytest.approx(0.3, rel=1e-5)
    # assignments composed through the parents
    for level, par in enumerate(p.parents):
        assert torch.equal(p.assignments[:, level + 1], par[p.assignments[:, level]])


def test_level0_phi_is_eq3_on_the_images(planted):
    points, _ = planted
    p = hierarchical_kmeans(points, [48], KMeansSettings(nredo=3))
    a = p.assignments[:, 0].numpy()
    # at convergence the (un-normalised) centroids are the means of their members
    raw = np.stack([points[a == j].mean(0) for j in range(48)])
    np.testing.assert_allclose(p.phi[0].numpy(), concentration(points, raw, a).numpy(), rtol=1e-3)
    np.testing.assert_allclose(p.centroids[0].numpy(), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_min_cluster_size_drops_small_clusters(rng):
    big = rng.standard_normal((200, 4)).astype(np.float32)
    far = (rng.standard_normal((3, 4)) * 0.01 + 50).astype(np.float32)  # a 3-point cluster far away
    x = np.concatenate([big, far])
    official = hierarchical_kmeans(x, [6], KMeansSettings(nredo=1))
    assert official.cluster_sizes(0).min().item() <= 3
    paper = hierarchical_kmeans(x, [6], KMeansSettings(nredo=1, min_cluster_size=10))
    assert paper.sizes[0] < 6
    assert paper.cluster_sizes(0).min().item() >= 10


@pytest.mark.parametrize(
    "sizes,match",
    [([10, 10], "strictly decreasing"), ([5, 8], "strictly decreasing"), ([], "at least one"), ([0], "positive")],
)
def test_bad_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        hierarchical_kmeans(np.zeros((50, 2), np.float32), sizes)


def test_fewer_points_than_clusters_and_nan():
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"fewer points \(20\) than clusters at level 0 \(30\)"):
        hierarchical_kmeans(x, [30, 10])
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_kmeans(x, [5])


def test_torch_backend_keeps_tensor_input_and_matches_numpy_input(planted):
    points, _ = planted
    settings = KMeansSettings(nredo=2, backend="torch")
    a = hierarchical_kmeans(points, [20, 6], settings)
    b = hierarchical_kmeans(torch.from_numpy(points), [20, 6], settings)
    assert torch.equal(a.assignments, b.assignments)
    for x, y in zip(a.centroids + a.phi, b.centroids + b.phi):
        torch.testing.assert_close(x, y)
    bad = torch.from_numpy(points).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_kmeans(bad, [5], settings)
