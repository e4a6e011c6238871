"""flat_multi_kmeans (PCL v2's E-step): independent K-means per K, Eq. 3 phi, majority-vote parents."""
import numpy as np
import pytest
import torch

from hierclr.clustering import KMeansSettings, concentration_from_distances, flat_multi_kmeans, kmeans, majority_parents


def slow_majority(child, parent, num_child):
    out = []
    for j in range(num_child):
        members = parent[child == j]
        if members.size == 0:
            out.append(0)
            continue
        counts = {p: int((members == p).sum()) for p in sorted(set(members.tolist()))}
        best = max(counts.values())
        out.append(min(p for p, c in counts.items() if c == best))
    return np.array(out)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_each_clustering_is_an_independent_kmeans(planted, backend):
    points, _ = planted
    ks = [12, 30, 20]  # any order: PCL's sizes need not decrease
    settings = KMeansSettings(niter=10, nredo=2, seed=4, temperature=0.3, backend=backend)
    protos = flat_multi_kmeans(points, ks, settings, epoch=7)
    assert protos.sizes == tuple(ks) and protos.epoch == 7 and protos.num_samples == len(points)
    for i, k in enumerate(ks):
        ref = kmeans(points, k, KMeansSettings(niter=10, nredo=2, seed=4 + i, backend=backend))
        np.testing.assert_array_equal(protos.assignments[:, i].numpy(), ref.assignments)
        unit = ref.centroids / np.linalg.norm(ref.centroids, axis=1, keepdims=True)
        np.testing.assert_allclose(protos.centroids[i].numpy(), unit, atol=1e-6)
        phi = concentration_from_distances(np.sqrt(ref.sq_distances), ref.assignments, k, temperature=0.3)
        torch.testing.assert_close(protos.phi[i], phi)
        assert protos.phi[i].mean().item() == pytest.approx(0.3, rel=1e-5)
    for lvl, par in enumerate(protos.parents):
        want = slow_majority(protos.assignments[:, lvl].numpy(), protos.assignments[:, lvl + 1].numpy(), ks[lvl])
        np.testing.assert_array_equal(par.numpy(), want)


def test_majority_vote_ties_and_empty_clusters(rng):
    child = np.array([0, 0, 1, 1, 1, 3, 3])
    parent = np.array([2, 1, 0, 4, 4, 3, 3])
    # child 0: tie 1/2 -> 1; child 1: 4; child 2: empty -> 0; child 3: 3
    np.testing.assert_array_equal(majority_parents(child, parent, 4).numpy(), [1, 4, 0, 3])
    child, parent = rng.integers(0, 40, 2000), rng.integers(0, 25, 2000)
    np.testing.assert_array_equal(majority_parents(child, parent, 45).numpy(), slow_majority(child, parent, 45))


def test_bad_num_clusters(planted):
    points, _ = planted
    with pytest.raises(ValueError, match="at least one"):
        flat_multi_kmeans(points, [], KMeansSettings())
    with pytest.raises(ValueError, match="positive integers"):
        flat_multi_kmeans(points, [10, 0], KMeansSettings())
    with pytest.raises(ValueError, match=r"fewer points \(30\) than clusters \(40\)"):
        flat_multi_kmeans(points[:30], [10, 40], KMeansSettings())
