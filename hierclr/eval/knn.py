"""Weighted k-nearest-neighbour evaluation of frozen features (NPID vote, HCSC Eq. 11).

The classifier of Wu et al. (NPID), used by HCSC for its kNN numbers: features are
L2-normalised, each test sample takes its ``k`` most cosine-similar training samples
``N_k(x)`` and class ``c`` gets the score

    p(c | x) = sum_{i in N_k(x)} exp(s_i / tau) * [y_i == c],   s_i = cos(x, x_i)   (Eq. 11)

The prediction is ``argmax_c p(c | x)``.

Memory: test rows are processed ``chunk_size`` at a time and, for the torch backend,
similarities against the training set are computed ``train_block_size`` training rows at a
time, merged into a running top-k; peak extra memory is O(chunk_size * (train_block_size + k))
so 1.28M train x 50k test never materialises the full similarity matrix.

Tie-breaks (documented, not guaranteed stable): among training samples with exactly equal
similarity the one kept at the k-th place is whichever ``torch.topk`` (torch backend) or faiss
(faiss backend) keeps; the block-wise merge can change which of equally similar samples is
kept. Scores are identical whenever tied samples share a label. Predictions use
``torch.argmax``, which returns the lowest class id among equal scores.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_accuracy", "knn_classify", "knn_predict"]

ArrayLike = Tensor | np.ndarray
Backend = Literal["torch", "faiss"]

_DEFAULT_TRAIN_BLOCK = 16384


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004 - spec: ValueError
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _as_features(x: ArrayLike, name: str) -> Tensor:
    """``x`` as a 2-D float tensor (float32 or float64) on its own device; NaN/inf rejected."""
    if not isinstance(x, Tensor):
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    x = x.detach()
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
        x = x.float()  # half/bfloat16/int: compute in float32
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature dimension, got shape {tuple(x.shape)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).any(dim=1).sum())
        raise ValueError(f"{name} contain NaN or inf values ({bad} rows affected)")
    return x


def _as_labels(y: ArrayLike, name: str, n: int, device: torch.device) -> Tensor:
    """``y`` as a 1-D long tensor of length ``n`` on ``device``."""
    if not isinstance(y, Tensor):
        arr = np.asarray(y)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
        y = torch.from_numpy(np.ascontiguousarray(arr))
    y = y.detach()
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} must have an integer dtype, got {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but the features have {n} rows")
    return y.to(device=device, dtype=torch.long)


def _check_label_range(y: Tensor, name: str, num_classes: int) -> None:
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must lie in [0, num_classes={num_classes}), got values in [{lo}, {hi}]")


def _check_common(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    temperature: float,
    chunk_size: int,
    train_block_size: int | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    train = _as_features(train_features, "train_features")
    test = _as_features(test_features, "test_features")
    if train.shape[0] == 0:
        raise ValueError("train_features is empty (0 rows)")
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"feature dimensions differ: train_features has d={train.shape[1]}, test_features has d={test.shape[1]}"
        )
    labels = _as_labels(train_labels, "train_labels", train.shape[0], train.device)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")  # noqa: TRY004
    if not (np.isfinite(float(temperature)) and float(temperature) > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
    chunk = _check_int(chunk_size, "chunk_size")
    block = _DEFAULT_TRAIN_BLOCK if train_block_size is None else _check_int(train_block_size, "train_block_size")
    if backend not in ("torch", "faiss"):
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    # one compute dtype for both sides (float64 only if both are float64)
    dtype = torch.promote_types(train.dtype, test.dtype)
    return train.to(dtype), labels, test.to(dtype), chunk, block


# ---------------------------------------------------------------------------------------------
# neighbour search
# ---------------------------------------------------------------------------------------------
def _neighbours_torch(
    train: Tensor, test: Tensor, k: int, chunk_size: int, train_block_size: int
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Yield ``(start, end, sims, idx)`` per test chunk; ``sims``/``idx`` are ``(rows, k)``,
    sorted by decreasing cosine similarity, computed on ``train.device``."""
    device = train.device
    n_train = train.shape[0]
    train = F.normalize(train, dim=1)  # once, not once per test chunk
    for start in range(0, test.shape[0], chunk_size):
        end = min(start + chunk_size, test.shape[0])
        q = F.normalize(test[start:end].to(device), dim=1)
        best_sims: Tensor | None = None
        best_idx: Tensor | None = None
        for b0 in range(0, n_train, train_block_size):
            b1 = min(b0 + train_block_size, n_train)
            sims = q @ train[b0:b1].T  # (rows, block)
            kb = min(k, b1 - b0)
            s, i = torch.topk(sims, kb, dim=1, largest=True, sorted=True)
            i = i + b0
            del sims
            if best_sims is None:
                best_sims, best_idx = s, i
                continue
            # merge with the running top-k: (rows, <= 2k) candidates
            cand_s = torch.cat([best_sims, s], dim=1)
            cand_i = torch.cat([best_idx, i], dim=1)
            kk = min(k, cand_s.shape[1])
            best_sims, pos = torch.topk(cand_s, kk, dim=1, largest=True, sorted=True)
            best_idx = torch.gather(cand_i, 1, pos)
        assert best_sims is not None and best_idx is not None
        yield start, end, best_sims, best_idx


def _neighbours_faiss(
    train: Tensor, test: Tensor, k: int, chunk_size: int, train_block_size: int
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """As :func:`_neighbours_torch` but searched with ``faiss.IndexFlatIP`` (CPU, float32);
    results are returned on ``train.device``."""
    try:
        import faiss  # imported lazily: only the faiss backend needs it
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a hard dependency
        raise ImportError("backend='faiss' needs the faiss package (faiss-cpu)") from exc
    device = train.device
    n_train, d = train.shape
    index = faiss.IndexFlatIP(d)
    for b0 in range(0, n_train, train_block_size):
        block = F.normalize(train[b0 : b0 + train_block_size].float(), dim=1)
        index.add(np.ascontiguousarray(block.cpu().numpy(), dtype=np.float32))
    for start in range(0, test.shape[0], chunk_size):
        end = min(start + chunk_size, test.shape[0])
        q = F.normalize(test[start:end].float(), dim=1)
        sims, idx = index.search(np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32), k)
        if (idx < 0).any():  # pragma: no cover - cannot happen for k <= n_train
            raise RuntimeError("faiss returned fewer than k neighbours")
        yield (
            start,
            end,
            torch.from_numpy(sims).to(device=device, dtype=train.dtype),
            torch.from_numpy(idx).to(device=device, dtype=torch.long),
        )


def _neighbours(
    backend: str, train: Tensor, test: Tensor, k: int, chunk_size: int, train_block_size: int
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    fn = _neighbours_faiss if backend == "faiss" else _neighbours_torch
    return fn(train, test, k, chunk_size, train_block_size)


def _vote(sims: Tensor, labels: Tensor, num_classes: int, temperature: float, out: Tensor | None = None) -> Tensor:
    """Eq. 11: add ``exp(s / tau)`` of each neighbour to its label's score."""
    weights = torch.exp(sims / temperature)
    if out is None:
        out = torch.zeros(sims.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
    return out.scatter_add_(1, labels, weights)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def knn_predict(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    *,
    k: int,
    temperature: float = 0.07,
    num_classes: int,
    chunk_size: int = 1024,
    backend: Backend = "torch",
    train_block_size: int | None = None,
) -> Tensor:
    """Per-class kNN scores ``(n_test, num_classes)`` by the weighted vote of HCSC Eq. 11.

    Features (``(n, d)``, numpy or torch) are L2-normalised here, so similarity is cosine;
    an all-zero row has similarity 0 to everything. Class ``c`` scores
    ``sum_{i in topk} exp(s_i / temperature) [y_i == c]``. Work is chunked over
    ``chunk_size`` test rows and (torch backend) ``train_block_size`` train rows
    (default 16384) with a running top-k merge. ``backend="faiss"`` searches with
    ``faiss.IndexFlatIP`` on CPU in float32. The result is a float tensor on the training
    features' device (CPU for numpy input / the faiss backend with CPU input), float64 only
    if both feature arrays are float64 (and the backend is torch).

    Raises:
        ValueError: on bad shapes, ``k`` outside ``[1, n_train]``, labels outside
            ``[0, num_classes)``, NaN/inf features, non-positive temperature or bad backend.
    """
    train, labels, test, chunk, block = _check_common(
        train_features, train_labels, test_features, temperature, chunk_size, train_block_size, backend
    )
    num_classes = _check_int(num_classes, "num_classes")
    k = _check_int(k, "k")
    if k > train.shape[0]:
        raise ValueError(f"k={k} exceeds the number of training samples n_train={train.shape[0]}")
    _check_label_range(labels, "train_labels", num_classes)

    out_dtype = train.dtype if backend == "torch" else torch.float32
    scores = torch.zeros(test.shape[0], num_classes, dtype=out_dtype, device=train.device)
    for start, end, sims, idx in _neighbours(backend, train, test, k, chunk, block):
        _vote(sims.to(out_dtype), labels[idx], num_classes, float(temperature), out=scores[start:end])
    return scores


def knn_classify(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    *,
    k: int,
    temperature: float = 0.07,
    num_classes: int,
    chunk_size: int = 1024,
    backend: Backend = "torch",
    train_block_size: int | None = None,
) -> Tensor:
    """kNN predictions ``(n_test,)`` (long): ``argmax`` of :func:`knn_predict` scores (Eq. 11);
    equal scores resolve to the lowest class id."""
    scores = knn_predict(
        train_features,
        train_labels,
        test_features,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
        backend=backend,
        train_block_size=train_block_size,
    )
    return scores.argmax(dim=1)


def knn_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    *,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    backend: Backend = "torch",
    train_block_size: int | None = None,
) -> dict[str, float | int]:
    """Top-1 kNN accuracy (Eq. 11 vote) for several ``k`` from one neighbour search.

    Searches the top ``max(ks)`` neighbours once; as they are sorted by similarity the
    top-``k`` set for a smaller ``k`` is their prefix, and scores are accumulated
    incrementally over the sorted ``ks``.

    Returns ``{"top1_k{k}": acc for each k, "top1_best": max acc, "best_k": its k}`` with
    accuracies in ``[0, 1]``. A ``k`` larger than ``n_train`` is capped at ``n_train``
    (with a ``UserWarning``); its key keeps the requested ``k``. On equal accuracies
    ``best_k`` is the smallest ``k``. ``num_classes=None`` infers
    ``max(train_labels, test_labels) + 1``.
    """
    train, labels, test, chunk, block = _check_common(
        train_features, train_labels, test_features, temperature, chunk_size, train_block_size, backend
    )
    test_y = _as_labels(test_labels, "test_labels", test.shape[0], train.device)
    if test.shape[0] == 0:
        raise ValueError("test_features is empty (0 rows): accuracy is undefined")
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    ks_list = sorted({_check_int(kv, "every k in ks") for kv in ks})
    if not ks_list:
        raise ValueError("ks must contain at least one k")
    if num_classes is None:
        if int(labels.min()) < 0 or int(test_y.min()) < 0:
            raise ValueError("labels must be non-negative class ids")
        num_classes = max(int(labels.max()), int(test_y.max())) + 1
    else:
        num_classes = _check_int(num_classes, "num_classes")
    _check_label_range(labels, "train_labels", num_classes)
    _check_label_range(test_y, "test_labels", num_classes)

    n_train = train.shape[0]
    capped = [kv for kv in ks_list if kv > n_train]
    if capped:
        warnings.warn(
            f"k={capped} exceed n_train={n_train}; using k={n_train} for them",
            UserWarning,
            stacklevel=2,
        )
    eff = {kv: min(kv, n_train) for kv in ks_list}
    k_max = max(eff.values())

    correct = {kv: 0 for kv in ks_list}
    out_dtype = train.dtype if backend == "torch" else torch.float32
    for start, end, sims, idx in _neighbours(backend, train, test, k_max, chunk, block):
        sims = sims.to(out_dtype)
        nb_labels = labels[idx]
        y = test_y[start:end]
        scores = torch.zeros(end - start, num_classes, dtype=out_dtype, device=sims.device)
        done = 0
        pred: Tensor | None = None
        for kv in ks_list:  # ascending, so each step only adds neighbours done..k
            ke = eff[kv]
            if ke > done or pred is None:
                _vote(sims[:, done:ke], nb_labels[:, done:ke], num_classes, float(temperature), out=scores)
                done = ke
                pred = scores.argmax(dim=1)
            correct[kv] += int((pred == y).sum())

    n_test = test.shape[0]
    result: dict[str, float | int] = {f"top1_k{kv}": correct[kv] / n_test for kv in ks_list}
    best_k = max(ks_list, key=lambda kv: (correct[kv], -kv))
    result["top1_best"] = correct[best_k] / n_test
    result["best_k"] = best_k
    return result
