"""Flat K-means with two backends behind one interface: faiss (the reference) and torch (Lloyd).

faiss is what the official HCSC code runs (``compat: official``): CPU always, a GPU flat index where
faiss's GPU build is installed. The torch backend runs the same Lloyd iterations as chunked
matmul + argmin on any torch device, so GPU clustering works wherever torch has CUDA; its
:func:`lloyd_partial_sums` step (assign a shard, return per-centroid sums and counts) is also the
building block of distributed K-means over feature shards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import get_args

import faiss
import numpy as np
import torch
from torch import Tensor

from hierclr.clustering.arrays import as_numpy
from hierclr.clustering.settings import DEFAULTS, Backend, KMeansSettings

log = logging.getLogger(__name__)

BACKENDS = get_args(Backend)

# faiss's split of an empty cluster perturbs the copied centroid by this relative amount.
_SPLIT_EPS = 1.0 / 1024.0


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of one flat K-means: un-normalised centroids and the final assignment of every point.

    ``assignments``/``sq_distances`` come from searching every input point against the *final*
    centroids (what the reference code does after ``clus.train``), not from the last iteration.
    """

    centroids: np.ndarray  # (k, d) float32
    assignments: np.ndarray  # (n,) int64
    sq_distances: np.ndarray  # (n,) float32, squared L2 to the assigned centroid
    objective: float  # sum of squared distances at the last training iteration (faiss's "obj")
    backend: str


def faiss_has_gpu() -> bool:
    """True when the installed faiss was built with GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(backend: str, device: torch.device | str | None) -> tuple[str, torch.device]:
    """Pick the concrete backend: faiss-GPU, else torch on CUDA, else faiss-CPU (for ``auto``)."""
    if backend not in BACKENDS:
        raise ValueError(f"clustering backend must be one of {BACKENDS}, got {backend!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"clustering device {dev} requested but torch sees no CUDA device")
    if backend == "auto":
        if dev.type == "cuda" and not faiss_has_gpu():
            return "torch", dev
        return "faiss", dev
    return backend, dev


def non_faiss_reason(settings: KMeansSettings, *, distributed: bool = False) -> str | None:
    """Why K-means with ``settings`` (on ``settings.device``) will not run faiss, the official code's K-means;
    ``None`` when it will. ``distributed``: level 0 runs as distributed Lloyd (always the torch update).

    The torch path runs the same Lloyd iterations but draws its own initial centroids and training
    subsample and splits an empty cluster from the largest one, so its prototypes are not the official ones.
    """
    if distributed:
        return "level 0 runs as distributed Lloyd over several clustering actors (torch updates)"
    name, dev = resolve_backend(settings.backend, settings.device)
    if name == "faiss":
        return None
    if settings.backend == "torch":
        return "clustering.backend is 'torch'"
    return f"backend 'auto' on {dev} without a faiss GPU build falls back to the torch backend"


def kmeans(
    x,
    k: int,
    settings: KMeansSettings = DEFAULTS,
    *,
    init_centroids=None,
    verbose: bool = False,
) -> KMeansResult:
    """K-means of ``x`` (``(n, d)``) into ``k`` clusters; ``settings`` default to faiss's official HCSC ones.

    Reads ``niter``, ``nredo``, ``seed``, ``max/min_points_per_centroid``, ``backend`` and ``device``
    from ``settings``. ``init_centroids`` (``(k, d)``) replaces the random initialisation (then
    ``nredo`` must be 1); this is how the two backends are compared on the same start.
    """
    if k < 1:
        raise ValueError(f"kmeans: k must be >= 1, got {k}")
    n = int(x.shape[0])
    if n < k:
        raise ValueError(f"kmeans: fewer points ({n}) than clusters ({k})")
    if init_centroids is not None and settings.nredo != 1:
        raise ValueError("kmeans: init_centroids given, so nredo must be 1 (every redo would start the same)")
    name, dev = resolve_backend(settings.backend, settings.device)
    if name == "faiss":
        return _kmeans_faiss(x, k, settings, device=dev, init=init_centroids, verbose=verbose)
    return _kmeans_torch(
        x, k, niter=settings.niter, nredo=settings.nredo, seed=settings.seed,
        max_ppc=settings.max_points_per_centroid, device=dev, init=init_centroids, verbose=verbose,
    )


def assign(x, centroids, *, backend: Backend = "auto", device=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every point: ``(sq_distances (n,), assignments (n,))``."""
    name, dev = resolve_backend(backend, device)
    if name == "faiss":
        xs = as_numpy(x, np.float32, "features")
        c = as_numpy(centroids, np.float32, "centroids")
        index = _faiss_flat_index(c.shape[1], dev)
        index.add(c)
        D, I = index.search(xs, 1)
        return D[:, 0].copy(), I[:, 0].astype(np.int64)
    xt = _as_tensor(x, dev)
    ct = _as_tensor(centroids, dev)
    d2, idx = nearest_centroid(xt, ct)
    return d2.cpu().numpy(), idx.cpu().numpy()


# ----------------------------------------------------------------------------- faiss backend
def _faiss_flat_index(d: int, device: torch.device):
    if device.type == "cuda" and faiss_has_gpu():
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = False
        cfg.device = device.index or 0
        return faiss.GpuIndexFlatL2(res, d, cfg)
    return faiss.IndexFlatL2(d)


def _kmeans_faiss(x, k, settings: KMeansSettings, *, device, init, verbose) -> KMeansResult:
    xs = as_numpy(x, np.float32, "features")
    d = xs.shape[1]
    clus = faiss.Clustering(d, k)
    clus.niter = settings.niter
    clus.nredo = settings.nredo
    clus.seed = settings.seed
    clus.max_points_per_centroid = settings.max_points_per_centroid
    clus.min_points_per_centroid = settings.min_points_per_centroid
    clus.spherical = False
    clus.verbose = verbose
    if init is not None:
        c0 = as_numpy(init, np.float32, "init_centroids")
        if c0.shape != (k, d):
            raise ValueError(f"kmeans: init_centroids shape {c0.shape}, expected {(k, d)}")
        faiss.copy_array_to_vector(c0.ravel(), clus.centroids)
    index = _faiss_flat_index(d, device)
    clus.train(xs, index)
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, d).astype(np.float32)
    stats = clus.iteration_stats
    objective = float(stats.at(stats.size() - 1).obj) if stats.size() else float("nan")
    # Search every point against the final centroids (the index holds them after training).
    D, I = index.search(xs, 1)
    return KMeansResult(centroids, I[:, 0].astype(np.int64), D[:, 0].copy(), objective, "faiss")


# ----------------------------------------------------------------------------- torch backend
def _as_tensor(x, device: torch.device) -> Tensor:
    if isinstance(x, Tensor):
        t = x.detach().to(device=device, dtype=torch.float32)
    else:
        t = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
    if not torch.isfinite(t).all():
        raise ValueError("features contain NaN or inf values")
    return t


# Floats per (rows, k) distance block: 128 MiB on the CPU (cache friendly), 1 GiB on a GPU (few, large launches).
_CPU_CHUNK_BUDGET = 1 << 25
_CUDA_CHUNK_BUDGET = 1 << 28
# How the low-precision scores are computed, per device type, chosen once by _pick_score_mode.
_SCORE_MODES = ("addmm_fp16", "mm_fp16", "upcast")
_score_mode: dict[str, str] = {}


def _chunk_rows(k: int, budget: int = _CPU_CHUNK_BUDGET) -> int:
    """Rows per chunk so that a (rows, k) distance block stays around ``budget`` floats."""
    return max(1, budget // max(k, 1))


def _half_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` scaled into [-1, 1] and rounded to fp16 (TF32's 10-bit mantissa), and the scale (a 0-d tensor).

    Computed once per K-means (the rows do not change between iterations); the scale keeps any input range
    inside fp16's and stays on the device (no host round trip).
    """
    scale = 1.0 / x.abs().amax().clamp_min(1e-30)
    return (x * scale).to(torch.float16), scale


def _half_scores(mode: str, bias: Tensor, xh: Tensor, ch_t: Tensor) -> Tensor:
    """``bias - 2 xh @ ch_t`` in fp32 from fp16 operands (fp32 accumulation)."""
    if mode == "addmm_fp16":
        return torch.addmm(bias, xh, ch_t, beta=1, alpha=-2, out_dtype=torch.float32)
    if mode == "mm_fp16":
        return torch.mm(xh, ch_t, out_dtype=torch.float32).mul_(-2.0).add_(bias)
    return torch.addmm(bias, xh.float(), ch_t.float(), alpha=-2.0)  # same rounded operands, fp32 matmul


def _pick_score_mode(device: torch.device) -> str:
    """The fastest score mode that this torch build runs correctly on ``device`` (checked once on a tiny
    problem against the fp32 matmul of the same fp16 operands; ``upcast`` always works)."""
    mode = _score_mode.get(device.type)
    if mode is not None:
        return mode
    gen = torch.Generator(device="cpu").manual_seed(0)
    xh = torch.randn(64, 16, generator=gen).to(device, torch.float16)
    ch_t = torch.randn(24, 16, generator=gen).to(device, torch.float16).T  # transposed, as in _assign_rows
    bias = torch.randn(24, generator=gen).to(device)
    ref = _half_scores("upcast", bias, xh, ch_t)
    mode = "upcast"
    for cand in _SCORE_MODES[:-1]:
        try:
            if torch.allclose(_half_scores(cand, bias, xh, ch_t), ref, rtol=1e-3, atol=1e-3):
                mode = cand
                break
        except (RuntimeError, TypeError, NotImplementedError):  # not in this build / not on this device
            continue
    _score_mode[device.type] = mode
    return mode


@torch.no_grad()
def _assign_rows(
    x: Tensor,
    centroids: Tensor,
    *,
    low_precision: bool,
    half: tuple[Tensor, Tensor] | None = None,
    sums: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every row of ``x``, chunked over rows: ``(sq_distances (n,), indices (n,))``.

    fp32 (``low_precision=False``, the CPU): ``||x||^2 - 2 x.c + ||c||^2`` and its minimum, as faiss.
    ``low_precision=True`` (CUDA): the argmin of ``||c||^2 - 2 x.c`` from fp16 operands (rows and centroids
    scaled into [-1, 1]; ``half`` = :func:`_half_rows` of ``x`` when the caller keeps it across iterations),
    then the exact fp32 squared distance to the chosen centroid, so the objective is never the low-precision one.
    ``sums`` (``(k, d)`` float64), when given, gets every row added to its centroid's row (the Lloyd update),
    chunk by chunk, so no float64 copy of ``x`` is ever made. No host round trip.
    """
    n, k = x.shape[0], centroids.shape[0]
    d2_out = torch.empty(n, dtype=torch.float32, device=x.device)
    idx_out = torch.empty(n, dtype=torch.long, device=x.device)
    if low_precision:
        xh, x_scale = half if half is not None else _half_rows(x)
        c_scale = 1.0 / centroids.abs().amax().clamp_min(1e-30)
        ch_t = (centroids * c_scale).to(torch.float16).T
        # argmin_j ||c_j||^2 - 2 x.c_j is unchanged by the positive factor x_scale * c_scale
        bias = (centroids * centroids).sum(1) * (x_scale * c_scale)
        mode = _pick_score_mode(x.device)
        step = _chunk_rows(k, _CUDA_CHUNK_BUDGET if x.device.type == "cuda" else _CPU_CHUNK_BUDGET)
    else:
        c_sq = (centroids * centroids).sum(1)
        step = _chunk_rows(k, _CPU_CHUNK_BUDGET)
    for s in range(0, n, step):
        xb = x[s : s + step]
        if low_precision:
            try:
                scores = _half_scores(mode, bias, xh[s : s + step], ch_t)
            except (RuntimeError, TypeError, NotImplementedError):  # a shape the mode check did not cover
                mode = _score_mode[x.device.type] = "upcast"
                scores = _half_scores(mode, bias, xh[s : s + step], ch_t)
            idx = scores.argmin(dim=1)
            diff = xb - centroids[idx]
            d2 = (diff * diff).sum(1)
        else:
            dist = (xb * xb).sum(1, keepdim=True) - 2.0 * (xb @ centroids.T) + c_sq
            d2, idx = dist.min(dim=1)
            d2.clamp_min_(0.0)
        d2_out[s : s + step] = d2
        idx_out[s : s + step] = idx
        if sums is not None:
            sums.index_add_(0, idx, xb.to(torch.float64))
    return d2_out, idx_out


@torch.no_grad()
def nearest_centroid(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Squared L2 distance to, and index of, each row's nearest centroid; chunked over rows.

    fp32 on the CPU; on CUDA the argmin comes from fp16 tensor-core scores and the returned distance is
    the exact fp32 one to the chosen centroid (see :func:`_assign_rows`).
    """
    return _assign_rows(x, centroids, low_precision=x.device.type == "cuda")


def _partial_sums(x: Tensor, centroids: Tensor, half: tuple[Tensor, Tensor] | None = None):
    k, d = centroids.shape
    sums = torch.zeros(k, d, dtype=torch.float64, device=x.device)
    d2, idx = _assign_rows(x, centroids, low_precision=x.device.type == "cuda", half=half, sums=sums)
    counts = torch.bincount(idx, minlength=k).to(torch.float64)
    return sums, counts, d2.to(torch.float64).sum()


@torch.no_grad()
def lloyd_partial_sums(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Lloyd assignment over a shard: per-centroid ``sums (k, d)`` (float64), ``counts (k,)``
    and the shard's objective (sum of squared distances). Summing these over shards and calling
    :func:`update_centroids` is exactly one iteration of K-means over the union of the shards.
    """
    return _partial_sums(x, centroids)


@torch.no_grad()
def update_centroids(sums: Tensor, counts: Tensor, centroids: Tensor) -> tuple[Tensor, int]:
    """New centroids = mean of their members; an empty cluster splits a large one (faiss ``split_clusters``).

    As faiss: the empty centroid becomes a copy of the split one and both are perturbed symmetrically,
    dimension by dimension with alternating signs (even dimensions: copy x (1 + eps), original x (1 - eps);
    odd: the reverse; eps = 1/1024), and the split cluster's count is halved between them. Unlike faiss,
    which picks the cluster to split at random with probability proportional to its size, the largest
    cluster is split (deterministic, identical across shards and processes). Returns the new centroids
    (float32) and the number of splits.
    """
    counts = counts.clone()
    new = centroids.to(torch.float64).clone()
    nonempty = counts > 0
    new[nonempty] = sums[nonempty] / counts[nonempty, None]
    nsplit = 0
    sign = torch.ones(new.shape[1], dtype=new.dtype, device=new.device)
    sign[1::2] = -1.0  # faiss: j % 2 == 0 -> +eps on the copy, -eps on the original; odd j the other way
    for j in torch.nonzero(~nonempty).flatten().tolist():
        big = int(torch.argmax(counts))
        new[j] = new[big] * (1 + _SPLIT_EPS * sign)
        new[big] = new[big] * (1 - _SPLIT_EPS * sign)
        counts[j] = counts[big] / 2
        counts[big] = counts[big] - counts[j]
        nsplit += 1
    return new.to(torch.float32), nsplit


@torch.no_grad()
def _lloyd_update(sums: Tensor, counts: Tensor, centroids: Tensor) -> Tensor:
    """:func:`update_centroids` without its host round trips when no cluster is empty.

    One scalar read per iteration (is any cluster empty?); only then are the k centroids and counts
    taken to the CPU for the sequential split (faiss's order, identical to :func:`update_centroids`).
    """
    if centroids.device.type == "cpu":
        return update_centroids(sums, counts, centroids)[0]
    if bool((counts == 0).any()):
        return update_centroids(sums.cpu(), counts.cpu(), centroids.cpu())[0].to(centroids.device)
    return (sums / counts[:, None]).to(torch.float32)


def _kmeans_torch(x, k, *, niter, nredo, seed, max_ppc, device, init, verbose) -> KMeansResult:
    xt = _as_tensor(x, device)
    n, d = xt.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    train = xt
    if n > k * max_ppc:  # subsample the training set like faiss does
        sel = torch.randperm(n, generator=gen)[: k * max_ppc].to(device)
        train = xt[sel]
    half = _half_rows(train) if device.type == "cuda" else None  # once: the rows never change
    best_c, best_obj = None, float("inf")
    for redo in range(nredo):
        if init is not None:
            c = _as_tensor(init, device)
            if c.shape != (k, d):
                raise ValueError(f"kmeans: init_centroids shape {tuple(c.shape)}, expected {(k, d)}")
        else:
            perm = torch.randperm(train.shape[0], generator=gen)[:k].to(device)
            c = train[perm].clone()
        obj_t = None
        for it in range(niter):
            sums, counts, obj_t = _partial_sums(train, c, half)
            c = _lloyd_update(sums, counts, c)
            if verbose:
                log.info("torch kmeans redo %d iter %d obj %.4f empty %d", redo, it, float(obj_t),
                         int((counts == 0).sum()))
        obj = float(obj_t)  # one host read per redo
        if obj < best_obj:
            best_c, best_obj = c, obj
    del half
    d2, idx = nearest_centroid(xt, best_c)
    return KMeansResult(
        best_c.cpu().numpy(), idx.cpu().numpy().astype(np.int64), d2.cpu().numpy(), best_obj, "torch"
    )
