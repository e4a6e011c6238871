"""Flat K-means backends: faiss and torch agree from the same start; sharded Lloyd == one Lloyd."""
import numpy as np
import pytest
import torch

from hierclr.clustering import (
    KMeansSettings,
    assign,
    kmeans,
    lloyd_partial_sums,
    nearest_centroid,
    resolve_backend,
    update_centroids,
)


def blobs(rng, k=12, per=50, d=8, spread=0.05):
    centres = rng.standard_normal((k, d)) * 3
    labels = np.repeat(np.arange(k), per)
    return (centres[labels] + spread * rng.standard_normal((k * per, d))).astype(np.float32), labels


def test_faiss_and_torch_agree_from_the_same_initial_centroids(rng):
    x, _ = blobs(rng)
    init = x[rng.choice(len(x), 12, replace=False)]
    a = kmeans(x, 12, KMeansSettings(niter=15, nredo=1, backend="faiss"), init_centroids=init)
    b = kmeans(x, 12, KMeansSettings(niter=15, nredo=1, backend="torch"), init_centroids=init)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-4)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    # both expand ||x||^2 - 2 x.c + ||c||^2 in float32; with ||x||^2 ~ 70 that leaves ~1e-5 absolute noise
    np.testing.assert_allclose(a.sq_distances, b.sq_distances, rtol=1e-3, atol=1e-4)
    assert a.objective == pytest.approx(b.objective, rel=1e-4)


def test_sharded_lloyd_equals_single_lloyd(rng):
    x = torch.from_numpy(blobs(rng)[0])
    c = x[:12].clone()
    full_sums, full_counts, full_obj = lloyd_partial_sums(x, c)
    parts = [lloyd_partial_sums(s, c) for s in torch.tensor_split(x, 3)]
    torch.testing.assert_close(sum(p[0] for p in parts), full_sums)
    torch.testing.assert_close(sum(p[1] for p in parts), full_counts)
    torch.testing.assert_close(sum(p[2] for p in parts), full_obj)
    new, _nsplit = update_centroids(full_sums, full_counts, c)
    # reference: mean of members, by loops
    d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    lab = d2.argmin(1)
    for j in range(12):
        members = x[lab == j]
        if len(members):
            torch.testing.assert_close(new[j], members.mean(0), atol=1e-5, rtol=1e-5)


def faiss_split_reference(centroids, counts):
    """faiss ``split_clusters`` (Clustering.cpp) in loops, with the largest cluster as the one to split."""
    c = [list(map(float, row)) for row in centroids]
    h = [float(n) for n in counts]
    eps = 1 / 1024
    for ci in range(len(c)):
        if h[ci] == 0:
            cj = max(range(len(c)), key=lambda j: (h[j], -j))  # the first largest
            c[ci] = list(c[cj])
            for j in range(len(c[ci])):
                if j % 2 == 0:
                    c[ci][j] *= 1 + eps
                    c[cj][j] *= 1 - eps
                else:
                    c[ci][j] *= 1 - eps
                    c[cj][j] *= 1 + eps
            h[ci] = h[cj] / 2
            h[cj] -= h[ci]
    return c


def test_empty_clusters_are_split_with_faiss_alternating_perturbation():
    x = torch.tensor([[1.0, 2, 3, 4], [1.2, 2.1, 2.9, 4.2], [0.8, 1.9, 3.1, 3.8], [0.9, 2.0, 3.0, 4.1],
                      [-5.0, -5, -5, -5], [-5.2, -5, -4.8, -5]])
    c = torch.tensor([[1.0, 2, 3, 4], [-5.0, -5, -5, -5], [100.0, 100, 100, 100], [-100.0, 0, 0, 0]])
    sums, counts, _ = lloyd_partial_sums(x, c)
    assert counts.tolist() == [4, 2, 0, 0]  # two empty clusters: split one after the other
    new, nsplit = update_centroids(sums, counts, c)
    assert nsplit == 2
    means = [x[:4].mean(0).tolist(), x[4:].mean(0).tolist(), [0.0] * 4, [0.0] * 4]
    want = torch.tensor(faiss_split_reference(means, counts.tolist()))
    torch.testing.assert_close(new, want.float())
    assert not torch.allclose(new[2], x[:4].mean(0) * (1 + 1 / 1024))  # not a scaling of the whole vector


def test_forced_split_matches_faiss_itself():
    """Only one cluster has more than one member, so faiss's random choice of the cluster to split is forced."""
    x = np.array([[1.0, 2, 3, 4], [1.2, 2.1, 2.9, 4.2], [0.8, 1.9, 3.1, 3.8], [-5, -5, -5, -5]], np.float32)
    init = np.array([[1, 2, 3, 4], [-5, -5, -5, -5], [100, 100, 100, 100]], np.float32)
    s = {"niter": 1, "nredo": 1, "min_points_per_centroid": 1}
    a = kmeans(x, 3, KMeansSettings(backend="faiss", **s), init_centroids=init)
    b = kmeans(x, 3, KMeansSettings(backend="torch", **s), init_centroids=init)
    np.testing.assert_allclose(b.centroids, a.centroids, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b.assignments, a.assignments)


def test_nearest_centroid_matches_brute_force(rng):
    x = torch.from_numpy(rng.standard_normal((300, 5)).astype(np.float32))
    c = torch.from_numpy(rng.standard_normal((17, 5)).astype(np.float32))
    d2, idx = nearest_centroid(x, c)
    ref = ((x[:, None] - c[None]) ** 2).sum(-1)
    torch.testing.assert_close(idx, ref.argmin(1))
    torch.testing.assert_close(d2, ref.min(1).values, atol=1e-4, rtol=1e-4)
    _D, I = assign(x.numpy(), c.numpy(), backend="faiss")
    np.testing.assert_array_equal(I, ref.argmin(1).numpy())


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_nredo_keeps_the_best_run_and_recovers_blobs(rng, backend):
    from sklearn.metrics import adjusted_mutual_info_score

    x, _labels = blobs(rng)
    one = kmeans(x, 12, KMeansSettings(nredo=1, seed=3, backend=backend))
    five = kmeans(x, 12, KMeansSettings(nredo=5, seed=3, backend=backend))  # its first redo is the nredo=1 run
    assert five.objective <= one.objective + 1e-6
    x4, labels4 = blobs(rng, k=4)
    r = kmeans(x4, 4, KMeansSettings(nredo=5, seed=3, backend=backend))
    assert adjusted_mutual_info_score(labels4, r.assignments) > 0.99


def test_errors_name_the_problem(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"fewer points \(5\) than clusters \(6\)"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuml", None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_backend("auto", "cuda")
    with pytest.raises(ValueError, match="nredo must be 1"):
        kmeans(x, 2, KMeansSettings(nredo=2), init_centroids=x[:2])
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.full((5, 3), np.nan, np.float32), 2)


def test_auto_backend_on_cpu_is_faiss():
    assert resolve_backend("auto", None)[0] == "faiss"
    assert resolve_backend("torch", "cpu") == ("torch", torch.device("cpu"))
