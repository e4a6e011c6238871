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

__all__ = [
    "knn_accuracy",
    "knn_accuracy_from_topk",
    "knn_classify",
    "knn_predict",
    "knn_predict_from_topk",
    "knn_topk",
    "merge_topk",
]

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


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")  # noqa: TRY004
    if not (np.isfinite(float(temperature)) and float(temperature) > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
    return float(temperature)


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
    _check_temperature(temperature)
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
    ks_list = _parse_ks(ks)
    num_classes = _resolve_num_classes(num_classes, labels, "train_labels", test_y)

    n_train = train.shape[0]
    eff = _effective_ks(ks_list, n_train, f"n_train={n_train}")
    k_max = max(eff.values())

    correct = {kv: 0 for kv in ks_list}
    out_dtype = train.dtype if backend == "torch" else torch.float32
    for start, end, sims, idx in _neighbours(backend, train, test, k_max, chunk, block):
        _count_correct(sims.to(out_dtype), labels[idx], test_y[start:end], eff, num_classes, float(temperature),
                       correct)
    return _accuracy_result(correct, test.shape[0])


def _parse_ks(ks: Sequence[int] | int) -> list[int]:
    """Distinct ``ks``, ascending."""
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    ks_list = sorted({_check_int(kv, "every k in ks") for kv in ks})
    if not ks_list:
        raise ValueError("ks must contain at least one k")
    return ks_list


def _resolve_num_classes(num_classes: int | None, labels: Tensor, labels_name: str, test_y: Tensor) -> int:
    """``num_classes`` checked against both label sets, or inferred as ``max + 1``."""
    if num_classes is None:
        if int(labels.min()) < 0 or int(test_y.min()) < 0:
            raise ValueError("labels must be non-negative class ids")
        num_classes = max(int(labels.max()), int(test_y.max())) + 1
    else:
        num_classes = _check_int(num_classes, "num_classes")
    _check_label_range(labels, labels_name, num_classes)
    _check_label_range(test_y, "test_labels", num_classes)
    return num_classes


def _effective_ks(ks_list: list[int], available: int, what: str) -> dict[int, int]:
    """Each requested ``k`` capped at the ``available`` neighbours (with a ``UserWarning`` naming ``what``)."""
    capped = [kv for kv in ks_list if kv > available]
    if capped:
        warnings.warn(f"k={capped} exceed {what}; using k={available} for them", UserWarning, stacklevel=3)
    return {kv: min(kv, available) for kv in ks_list}


def _count_correct(sims: Tensor, nb_labels: Tensor, y: Tensor, eff: dict[int, int], num_classes: int,
                   temperature: float, correct: dict[int, int]) -> None:
    """Add one chunk's correct Eq. 11 predictions for every k to ``correct``; ``sims``/``nb_labels`` are sorted
    by decreasing similarity, so the top-k set of a smaller k is a prefix and votes accumulate over ascending k."""
    scores = torch.zeros(sims.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
    done = 0
    pred: Tensor | None = None
    for kv in sorted(eff):  # ascending, so each step only adds neighbours done..k
        ke = eff[kv]
        if ke > done or pred is None:
            _vote(sims[:, done:ke], nb_labels[:, done:ke], num_classes, temperature, out=scores)
            done = ke
            pred = scores.argmax(dim=1)
        correct[kv] += int((pred == y).sum())


def _accuracy_result(correct: dict[int, int], n_test: int) -> dict[str, float | int]:
    """``top1_k{k}`` per k, ``top1_best`` and ``best_k`` (the smallest k among equal accuracies)."""
    ks_list = sorted(correct)
    result: dict[str, float | int] = {f"top1_k{kv}": correct[kv] / n_test for kv in ks_list}
    best_k = max(ks_list, key=lambda kv: (correct[kv], -kv))
    result["top1_best"] = correct[best_k] / n_test
    result["best_k"] = best_k
    return result


# ---------------------------------------------------------------------------------------------
# distributed kNN: per-shard top-k, merge, vote
# ---------------------------------------------------------------------------------------------
# Each Ray Train worker holds a shard of the training features and all (all-gathered) test features:
#   parts = all_gather(knn_topk(shard_x, shard_y, test_x, k=max(ks)))
#   knn_accuracy_from_topk(*merge_topk(parts, k=max(ks)), test_y, ks)
# equals knn_accuracy on the whole training set (up to ties in similarity, which the merge breaks by part order).
def knn_topk(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    k: int,
    *,
    chunk_size: int = 1024,
    backend: Backend = "torch",
    train_block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k' = min(k, n_train)`` most cosine-similar training rows of each test row, within this (shard of the)
    training set: ``(sims, labels)``, both ``(n_test, k')``, sorted by decreasing similarity (the ``N_k(x)`` of
    Eq. 11 restricted to the shard). Features are L2-normalised here; search is chunked as in :func:`knn_predict`.
    ``sims`` has the dtype :func:`knn_accuracy` votes in (float32 unless both inputs are float64 and the backend is
    torch) and lives on the training features' device, as does ``labels`` (long). An empty shard (0 rows) gives
    ``k' = 0``.
    """
    k = _check_int(k, "k")
    shape = np.shape(train_features)
    if len(shape) == 2 and shape[0] == 0:  # an empty shard contributes no neighbours
        train = _as_features(train_features, "train_features")
        test = _as_features(test_features, "test_features")
        if train.shape[1] != test.shape[1]:
            raise ValueError(f"feature dimensions differ: train_features has d={train.shape[1]}, test_features has "
                             f"d={test.shape[1]}")
        _as_labels(train_labels, "train_labels", 0, train.device)
        dtype = torch.promote_types(train.dtype, test.dtype) if backend == "torch" else torch.float32
        return (torch.empty(test.shape[0], 0, dtype=dtype, device=train.device),
                torch.empty(test.shape[0], 0, dtype=torch.long, device=train.device))
    train, labels, test, chunk, block = _check_common(
        train_features, train_labels, test_features, 1.0, chunk_size, train_block_size, backend  # 1.0: unused tau
    )
    kk = min(k, train.shape[0])
    out_dtype = train.dtype if backend == "torch" else torch.float32
    sims_out = torch.empty(test.shape[0], kk, dtype=out_dtype, device=train.device)
    labels_out = torch.empty(test.shape[0], kk, dtype=torch.long, device=train.device)
    for start, end, sims, idx in _neighbours(backend, train, test, kk, chunk, block):
        sims_out[start:end] = sims.to(out_dtype)
        labels_out[start:end] = labels[idx]
    return sims_out, labels_out


def _as_topk(sims: ArrayLike, labels: ArrayLike, name: str) -> tuple[Tensor, Tensor]:
    """A ``(sims, labels)`` pair as (float, long) tensors of one ``(n_test, m)`` shape."""
    s = torch.from_numpy(np.ascontiguousarray(sims)) if not isinstance(sims, Tensor) else sims.detach()
    if s.dim() != 2 or not s.is_floating_point():
        raise ValueError(f"{name}: sims must be a 2-D float array (n_test, k), got {s.dtype} {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name}: sims contain NaN or inf values")
    lab = torch.from_numpy(np.ascontiguousarray(labels)) if not isinstance(labels, Tensor) else labels.detach()
    if lab.dtype == torch.bool or lab.is_floating_point() or lab.is_complex():
        raise ValueError(f"{name}: labels must have an integer dtype, got {lab.dtype}")
    if lab.shape != s.shape:
        raise ValueError(f"{name}: labels have shape {tuple(lab.shape)} but sims have {tuple(s.shape)}")
    return s, lab.to(device=s.device, dtype=torch.long)


def merge_topk(
    parts: Sequence[tuple[ArrayLike, ArrayLike]], k: int, *, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Merge per-shard top-k lists (from :func:`knn_topk`) into the global top-``min(k, sum of widths)``.

    ``parts[i] = (sims (n_test, k_i), labels (n_test, k_i))``, each sorted by decreasing similarity; shards with
    fewer than ``k`` rows (or none) are fine. The result is sorted by decreasing similarity; equal similarities keep
    the order of ``parts`` and then their order within a part (a stable sort), so the same parts in the same order
    (e.g. by worker rank) always give the same result. Computed on the first part's device, in the promoted dtype.
    """
    k = _check_int(k, "k")
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    pairs = [_as_topk(s, lab, f"parts[{i}]") for i, (s, lab) in enumerate(parts)]
    n_test = pairs[0][0].shape[0]
    bad = [i for i, (s, _) in enumerate(pairs) if s.shape[0] != n_test]
    if bad:
        raise ValueError(f"every part must have n_test={n_test} rows; parts {bad} have "
                         f"{[pairs[i][0].shape[0] for i in bad]}")
    chunk = _check_int(chunk_size, "chunk_size")
    device = pairs[0][0].device
    dtype = pairs[0][0].dtype
    for s, _ in pairs[1:]:
        dtype = torch.promote_types(dtype, s.dtype)
    sims = torch.cat([s.to(device=device, dtype=dtype) for s, _ in pairs], dim=1)
    labels = torch.cat([lab.to(device) for _, lab in pairs], dim=1)
    kk = min(k, sims.shape[1])
    out_sims = torch.empty(n_test, kk, dtype=dtype, device=device)
    out_labels = torch.empty(n_test, kk, dtype=torch.long, device=device)
    for start in range(0, n_test, chunk):
        s, order = torch.sort(sims[start : start + chunk], dim=1, descending=True, stable=True)
        out_sims[start : start + chunk] = s[:, :kk]
        out_labels[start : start + chunk] = torch.gather(labels[start : start + chunk], 1, order[:, :kk])
    return out_sims, out_labels


def knn_predict_from_topk(
    sims: ArrayLike,
    labels: ArrayLike,
    *,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
) -> Tensor:
    """Eq. 11 class scores ``(n_test, num_classes)`` from the first ``k`` of precomputed, sorted neighbours
    (:func:`knn_topk` / :func:`merge_topk`); the counterpart of :func:`knn_predict`."""
    s, lab = _as_topk(sims, labels, "topk")
    k = _check_int(k, "k")
    if k > s.shape[1]:
        raise ValueError(f"k={k} exceeds the {s.shape[1]} neighbours given per test row")
    num_classes = _check_int(num_classes, "num_classes")
    _check_label_range(lab, "labels", num_classes)
    tau = _check_temperature(temperature)
    return _vote(s[:, :k], lab[:, :k], num_classes, tau)


def knn_accuracy_from_topk(
    sims: ArrayLike,
    labels: ArrayLike,
    test_labels: ArrayLike,
    ks: Sequence[int] = (10, 20, 100, 200),
    num_classes: int | None = None,
    temperature: float = 0.07,
    *,
    chunk_size: int = 1024,
) -> dict[str, float | int]:
    """:func:`knn_accuracy` from precomputed, sorted neighbours (``(n_test, m)`` sims and labels, e.g. the merged
    per-shard top-k of :func:`merge_topk`): the same keys (``top1_k{k}``, ``top1_best``, ``best_k``) and the same
    Eq. 11 vote. A ``k`` above the ``m`` neighbours given is capped at ``m`` with a ``UserWarning`` (as
    :func:`knn_accuracy` caps at ``n_train``; search with ``k >= max(ks)`` to avoid it). ``num_classes=None``
    infers ``max(labels, test_labels) + 1``; it does not change the predictions.
    """
    s, lab = _as_topk(sims, labels, "topk")
    test_y = _as_labels(test_labels, "test_labels", s.shape[0], s.device)
    if s.shape[0] == 0:
        raise ValueError("the top-k lists are empty (0 test rows): accuracy is undefined")
    if s.shape[1] == 0:
        raise ValueError("no neighbours given (0 columns): is the training set empty?")
    ks_list = _parse_ks(ks)
    num_classes = _resolve_num_classes(num_classes, lab, "labels", test_y)
    tau = _check_temperature(temperature)
    chunk = _check_int(chunk_size, "chunk_size")
    eff = _effective_ks(ks_list, s.shape[1], f"the {s.shape[1]} neighbours given per test row")
    correct = {kv: 0 for kv in ks_list}
    for start in range(0, s.shape[0], chunk):
        end = start + chunk
        _count_correct(s[start:end], lab[start:end], test_y[start:end], eff, num_classes, tau, correct)
    return _accuracy_result(correct, s.shape[0])
