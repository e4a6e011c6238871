"""Distributed Lloyd over shards == the single-process torch K-means on the id-sorted features."""
import numpy as np
import pytest
import torch

from hierclr.clustering import (
    KMeansSettings,
    LocalShards,
    build_hierarchy,
    distributed_hierarchical_kmeans,
    distributed_kmeans,
    expand_to_ids,
    hierarchical_kmeans,
    kmeans,
    level0_kmeans,
)


def blobs(rng, k=6, per=50, d=16, spread=0.3):
    centres = rng.standard_normal((k, d)) * 2
    labels = np.repeat(np.arange(k), per)
    return (centres[labels] + spread * rng.standard_normal((k * per, d))).astype(np.float32)


def sharded(rng, x, cuts=(70, 190), id_pool=None):
    """Shuffled, unequal shards with ids drawn from ``id_pool`` (default 0..N-1); returns shards and the
    features sorted by id (the global order)."""
    n = x.shape[0]
    ids = rng.permutation(id_pool if id_pool is not None else np.arange(n))[:n]
    shards = [(ids[a:b], x[a:b]) for a, b in zip((0, *cuts), (*cuts, n))]
    return shards, x[np.argsort(ids)]


def assert_same_kmeans(a, b, atol=1e-5):
    np.testing.assert_allclose(a.centroids, b.centroids, atol=atol)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_allclose(a.sq_distances, b.sq_distances, rtol=1e-5, atol=1e-5)
    assert a.objective == pytest.approx(b.objective, rel=1e-6)


def test_from_the_same_initial_centroids(rng):
    x = blobs(rng)
    shards, xs = sharded(rng, x)
    init = xs[rng.choice(len(xs), 6, replace=False)]
    got = distributed_kmeans(LocalShards(shards), 6, KMeansSettings(niter=10, nredo=1), init_centroids=init)
    want = kmeans(xs, 6, KMeansSettings(niter=10, nredo=1, backend="torch"), init_centroids=init)
    assert got.backend == "torch-distributed"
    assert_same_kmeans(got, want)


@pytest.mark.parametrize("max_ppc", [1000, 20])  # 20: n=300 > 6 * 20, the subsampled training set
def test_from_the_same_seed_with_redos(rng, max_ppc):
    x = blobs(rng, spread=0.8)  # overlapping blobs: the redos really differ
    shards, xs = sharded(rng, x)
    settings = KMeansSettings(niter=8, nredo=3, seed=5, max_points_per_centroid=max_ppc, backend="torch")
    got = distributed_kmeans(LocalShards(shards), 6, settings)
    want = kmeans(xs, 6, settings)
    assert_same_kmeans(got, want)


def test_empty_clusters_are_split_the_same_way(rng):
    x = blobs(rng, k=3)
    shards, xs = sharded(rng, x, cuts=(40, 41))  # also a one-row shard
    init = np.concatenate([xs[:3], np.full((2, 16), 100.0, np.float32)])  # two centroids nobody is near
    got = distributed_kmeans(LocalShards(shards), 5, KMeansSettings(niter=6, nredo=1), init_centroids=init)
    want = kmeans(xs, 5, KMeansSettings(niter=6, nredo=1, backend="torch"), init_centroids=init)
    assert_same_kmeans(got, want)
    assert np.abs(got.centroids).max() < 50  # the far centroids were split off populated ones


def test_ids_with_gaps_and_an_empty_shard(rng):
    x = blobs(rng)
    shards, xs = sharded(rng, x, id_pool=np.arange(0, 3000, 7))  # 300 of 429 ids, not contiguous
    shards.append((np.zeros(0, np.int64), np.zeros((0, 16), np.float32)))
    settings = KMeansSettings(niter=5, nredo=2, seed=1, backend="torch")
    got = distributed_kmeans(LocalShards(shards), 6, settings)
    want = kmeans(xs, 6, settings)
    assert_same_kmeans(got, want)


@pytest.mark.parametrize("min_cluster_size", [0, 30])
def test_hierarchy_equals_hierarchical_kmeans(planted, rng, min_cluster_size):
    points, _ = planted
    shards, xs = sharded(rng, points, cuts=(500, 1000))
    settings = KMeansSettings(niter=10, nredo=2, seed=3, temperature=0.3, min_cluster_size=min_cluster_size,
                              backend="torch")
    got = distributed_hierarchical_kmeans(LocalShards(shards), [60, 12, 4], settings, epoch=2)
    want = hierarchical_kmeans(xs, [60, 12, 4], settings, epoch=2)
    assert got.sizes == want.sizes and got.epoch == 2
    if min_cluster_size:
        assert got.sizes[0] < 60  # the drop really happened
    assert torch.equal(got.assignments, want.assignments)
    for a, b in zip(got.parents, want.parents):
        assert torch.equal(a, b)
    for a, b in zip(got.centroids + got.phi, want.centroids + want.phi):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_build_hierarchy_from_level0_is_hierarchical_kmeans(planted, backend):
    points, _ = planted
    settings = KMeansSettings(niter=10, nredo=2, seed=1, backend=backend)
    level0 = level0_kmeans(points, 40, settings)
    got = build_hierarchy(level0, [40, 10, 3], settings, epoch=1)
    want = hierarchical_kmeans(points, [40, 10, 3], settings, epoch=1)
    for a, b in zip(got.centroids + got.phi + got.parents, want.centroids + want.phi + want.parents):
        assert torch.equal(a, b)
    assert torch.equal(got.assignments, want.assignments)


def test_expand_to_ids_marks_missing_ids(planted):
    points, _ = planted
    protos = hierarchical_kmeans(points[:100], [5, 2], KMeansSettings(nredo=1))
    ids = np.arange(0, 200, 2)  # present: the even ids
    full = expand_to_ids(protos, ids, 201)
    assert full.num_samples == 201
    assert torch.equal(full.assignments[ids], protos.assignments)
    assert (full.assignments[1::2] == -1).all()
    assert expand_to_ids(protos, np.arange(100), 100) is protos
    with pytest.raises(ValueError, match="sorted and unique"):
        expand_to_ids(protos, ids[::-1].copy(), 201)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 150\)"):
        expand_to_ids(protos, ids, 150)


def test_local_shards_reject_bad_input(rng):
    x = blobs(rng)
    with pytest.raises(ValueError, match="duplicate ids across shards, e.g. \\[3\\]"):
        LocalShards([(np.array([1, 3]), x[:2]), (np.array([3, 4]), x[2:4])])
    with pytest.raises(ValueError, match="feature dimension"):
        LocalShards([(np.array([1]), x[:1]), (np.array([2]), x[:1, :8])])
    with pytest.raises(ValueError, match="fewer points"):
        distributed_kmeans(LocalShards([(np.arange(4), x[:4])]), 5, KMeansSettings())
    with pytest.raises(ValueError, match="nredo must be 1"):
        distributed_kmeans(LocalShards([(np.arange(10), x[:10])]), 2, KMeansSettings(nredo=2), init_centroids=x[:2])
