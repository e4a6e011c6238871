"""The torch backend's chunked assignment equals a naive full-matrix reference (chunk boundaries, empty
clusters), and its low-precision (CUDA) scoring picks the nearest centroid with the exact fp32 distance.

On the CPU the low-precision path runs its ``upcast`` mode: the same fp16-rounded operands with fp32
accumulation that the GPU's fp16 tensor-core matmul computes.
"""
import importlib

import numpy as np
import pytest
import torch

from hierclr.clustering import KMeansSettings, kmeans, lloyd_partial_sums, nearest_centroid

km = importlib.import_module("hierclr.clustering.kmeans")  # the module: the package re-exports kmeans()


def naive(x: torch.Tensor, c: torch.Tensor):
    """Full (n, k) squared-distance matrix in float64: min, argmin, per-centroid sums and counts."""
    d = ((x.double()[:, None, :] - c.double()[None]) ** 2).sum(-1)
    d2, idx = d.min(1)
    sums = torch.zeros(c.shape, dtype=torch.float64)
    for j in range(c.shape[0]):
        if (idx == j).any():
            sums[j] = x.double()[idx == j].sum(0)
    return d2, idx, sums, torch.bincount(idx, minlength=c.shape[0]).double(), d


def blobs(rng, k=10, per=30, d=6, spread=0.05, scale=3.0):
    centres = rng.standard_normal((k, d)) * scale
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + spread * scale * rng.standard_normal((k * per, d))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(centres.astype(np.float32))


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 100, 299, 300, 301, 10_000])
def test_chunked_fp32_assignment_and_sums_equal_the_full_matrix(rng, monkeypatch, rows_per_chunk):
    x = torch.from_numpy(rng.standard_normal((300, 5)).astype(np.float32))
    c = torch.from_numpy(rng.standard_normal((13, 5)).astype(np.float32))
    c[12] = 100.0  # far away: an empty cluster
    monkeypatch.setattr(km, "_CPU_CHUNK_BUDGET", rows_per_chunk * c.shape[0])
    assert km._chunk_rows(c.shape[0], km._CPU_CHUNK_BUDGET) == rows_per_chunk
    d2_ref, idx_ref, sums_ref, counts_ref, _ = naive(x, c)
    d2, idx = nearest_centroid(x, c)
    torch.testing.assert_close(idx, idx_ref)
    torch.testing.assert_close(d2.double(), d2_ref, atol=1e-4, rtol=1e-4)
    sums, counts, obj = lloyd_partial_sums(x, c)
    assert counts[12] == 0 and (sums[12] == 0).all()
    torch.testing.assert_close(counts, counts_ref)
    torch.testing.assert_close(sums, sums_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(obj, d2_ref.sum(), atol=1e-3, rtol=1e-5)


def test_kmeans_result_does_not_depend_on_the_chunk_size(rng, monkeypatch):
    x, _ = blobs(rng)
    whole = kmeans(x.numpy(), 10, KMeansSettings(niter=8, nredo=2, seed=1, backend="torch"))
    monkeypatch.setattr(km, "_CPU_CHUNK_BUDGET", 17 * 10)  # 17 rows per chunk: 300 rows end mid-chunk
    chunked = kmeans(x.numpy(), 10, KMeansSettings(niter=8, nredo=2, seed=1, backend="torch"))
    np.testing.assert_array_equal(whole.assignments, chunked.assignments)
    np.testing.assert_allclose(whole.centroids, chunked.centroids, atol=1e-6)
    assert whole.objective == pytest.approx(chunked.objective, rel=1e-6)


@pytest.mark.parametrize("rows_per_chunk", [7, 10_000])
@pytest.mark.parametrize("scale", [1.0, 1e6])  # 1e6: far outside fp16's range before scaling
def test_low_precision_scores_pick_the_nearest_centroid_with_the_exact_distance(rng, monkeypatch, rows_per_chunk,
                                                                               scale):
    x, centres = blobs(rng, scale=3.0 * scale)
    c = torch.cat([centres, torch.full((1, centres.shape[1]), 50.0 * scale)])  # plus an empty cluster
    monkeypatch.setattr(km, "_CPU_CHUNK_BUDGET", rows_per_chunk * c.shape[0])
    _, idx_ref, sums_ref, counts_ref, _ = naive(x, c)
    sums = torch.zeros(c.shape, dtype=torch.float64)
    d2, idx = km._assign_rows(x, c, low_precision=True, sums=sums)
    torch.testing.assert_close(idx, idx_ref)  # well separated: no near ties, so fp16 scores decide alike
    exact = ((x.double() - c.double()[idx]) ** 2).sum(1)
    torch.testing.assert_close(d2.double(), exact, rtol=1e-5, atol=1e-6 * scale**2)
    torch.testing.assert_close(sums, sums_ref, rtol=1e-9, atol=1e-9 * scale)
    assert counts_ref[-1] == 0 and (sums[-1] == 0).all()


def test_low_precision_assignment_is_near_optimal_on_random_unit_vectors(rng):
    """Unit vectors in 64-d into 200 centroids (many near ties): fp16 scores may pick a near-tied centroid,
    but never one much farther, and the objective is the exact distance of what was picked."""
    x = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((4000, 64)).astype(np.float32)), dim=1)
    c = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((200, 64)).astype(np.float32)), dim=1)
    d2_ref, idx_ref, _, _, full = naive(x, c)
    d2, idx = km._assign_rows(x, c, low_precision=True)
    picked = full.gather(1, idx[:, None])[:, 0]
    torch.testing.assert_close(d2.double(), picked, atol=1e-5, rtol=1e-5)
    assert (picked - d2_ref).max() < 5e-3  # fp16 operands: ~1e-3 absolute score error at most
    assert (idx == idx_ref).float().mean() > 0.98
    assert float(d2.double().sum()) == pytest.approx(float(d2_ref.sum()), rel=1e-4)


def test_score_mode_falls_back_where_fp16_matmul_is_missing():
    """The CPU has no fp16 -> fp32 ``out_dtype`` matmul: the check settles on ``upcast``, which always runs."""
    km._score_mode.pop("cpu", None)
    assert km._pick_score_mode(torch.device("cpu")) == "upcast"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_backend_matches_the_cpu_one(rng):
    x, _ = blobs(rng, k=20, per=100, d=32)
    init = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:20]]
    settings = KMeansSettings(niter=10, nredo=1, backend="torch")
    cpu = kmeans(x.numpy(), 20, settings.model_copy(update={"device": "cpu"}), init_centroids=init.numpy())
    gpu = kmeans(x.numpy(), 20, settings.model_copy(update={"device": "cuda"}), init_centroids=init.numpy())
    np.testing.assert_array_equal(cpu.assignments, gpu.assignments)
    np.testing.assert_allclose(cpu.centroids, gpu.centroids, atol=1e-4)
    assert cpu.objective == pytest.approx(gpu.objective, rel=1e-4)
