"""Distributed kNN (per-shard top-k, merge, vote) against single-process knn_accuracy and a loop reference."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from hierclr.eval.knn import (
    knn_accuracy,
    knn_accuracy_from_topk,
    knn_classify,
    knn_predict,
    knn_predict_from_topk,
    knn_topk,
    merge_topk,
)


def make_data(seed, n_train, n_test, d, num_classes):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, d)) * 1.5
    train_labels = rng.integers(0, num_classes, size=n_train)
    test_labels = rng.integers(0, num_classes, size=n_test)
    train = (centres[train_labels] + rng.normal(size=(n_train, d))) * rng.uniform(0.1, 10.0, size=(n_train, 1))
    test = (centres[test_labels] + rng.normal(size=(n_test, d))) * rng.uniform(0.1, 10.0, size=(n_test, 1))
    return train, train_labels, test, test_labels


def sharded_topk(train, labels, test, k, bounds, **kw):
    """What the workers compute: knn_topk on each contiguous shard (all test rows), then the merge."""
    parts = [knn_topk(train[a:b], labels[a:b], test, k, **kw) for a, b in pairwise(bounds)]
    return parts, merge_topk(parts, k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_three_shards_equal_the_whole_set(dtype, backend):
    train, labels, test, test_labels = make_data(0, 300, 120, 16, 7)
    train, test = train.astype(dtype), test.astype(dtype)
    ks = (1, 5, 20, 50)
    _, (sims, nb_labels) = sharded_topk(train, labels, test, max(ks), [0, 97, 211, 300], chunk_size=33,
                                        train_block_size=40, backend=backend)
    assert sims.shape == nb_labels.shape == (120, 50)
    expected_dtype = torch.float64 if dtype == np.float64 and backend == "torch" else torch.float32
    assert sims.dtype == expected_dtype and nb_labels.dtype == torch.long
    # the merged lists are the whole set's top-50
    whole_sims, whole_labels = knn_topk(train, labels, test, max(ks), backend=backend)
    np.testing.assert_allclose(sims.numpy(), whole_sims.numpy(), rtol=0, atol=1e-12 if dtype == np.float64 else 1e-6)
    assert torch.equal(nb_labels, whole_labels)
    # same accuracies (all keys) as knn_accuracy on the whole training set
    res = knn_accuracy_from_topk(sims, nb_labels, test_labels, ks, num_classes=7, chunk_size=17)
    ref = knn_accuracy(train, labels, test, test_labels, ks=ks, num_classes=7, backend=backend)
    assert res == ref and set(res) == {"top1_k1", "top1_k5", "top1_k20", "top1_k50", "top1_best", "best_k"}
    assert 0.3 < res["top1_best"] < 1.0  # a non-trivial problem
    # same predictions and scores per k
    for k in ks:
        scores = knn_predict_from_topk(sims, nb_labels, k=k, num_classes=7)
        whole = knn_predict(train, labels, test, k=k, num_classes=7, backend=backend)
        np.testing.assert_allclose(scores.numpy(), whole.numpy(), rtol=1e-9 if dtype == np.float64 else 1e-4)
        assert torch.equal(scores.argmax(dim=1), knn_classify(train, labels, test, k=k, num_classes=7,
                                                              backend=backend))


def test_shards_smaller_than_k_and_empty_shards():
    train, labels, test, test_labels = make_data(1, 40, 25, 5, 4)
    parts, (sims, nb_labels) = sharded_topk(train, labels, test, 20, [0, 3, 3, 15, 40])  # shards of 3, 0, 12, 25
    assert [p[0].shape[1] for p in parts] == [3, 0, 12, 20]
    assert sims.shape == (25, 20)
    whole_sims, whole_labels = knn_topk(train, labels, test, 20)
    np.testing.assert_allclose(sims.numpy(), whole_sims.numpy(), rtol=0, atol=1e-12)
    assert torch.equal(nb_labels, whole_labels)
    # all shards together smaller than k: k' = n_train, and the vote caps k like knn_accuracy does
    parts, (sims, nb_labels) = sharded_topk(train[:9], labels[:9], test, 20, [0, 4, 9])
    assert sims.shape == (25, 9)
    with pytest.warns(UserWarning, match="exceed the 9 neighbours given"):
        res = knn_accuracy_from_topk(sims, nb_labels, test_labels, (3, 20), num_classes=4)
    with pytest.warns(UserWarning, match="exceed n_train=9"):
        ref = knn_accuracy(train[:9], labels[:9], test, test_labels, ks=(3, 20), num_classes=4)
    assert res == ref
    with pytest.raises(ValueError, match="no neighbours given"):
        knn_accuracy_from_topk(*knn_topk(train[:0], labels[:0], test, 5), test_labels, (5,))


def reference_topk(train, labels, test, k):
    """Explicit loops in float64: cosine similarity to every training row, sorted with a stable tie-break."""
    out = []
    for t in test:
        tn = t / math.sqrt(sum(v * v for v in t))
        sims = []
        for j, x in enumerate(train):
            xn = x / math.sqrt(sum(v * v for v in x))
            sims.append((sum(a * b for a, b in zip(tn, xn)), j))
        sims.sort(key=lambda p: (-p[0], p[1]))
        out.append([(s, int(labels[j])) for s, j in sims[:k]])
    return out


def test_tiny_case_against_loops():
    train, labels, test, test_labels = make_data(2, 11, 6, 3, 3)
    k, tau = 4, 0.07
    ref = reference_topk(train, labels, test, k)
    parts = [knn_topk(train[a:b], labels[a:b], test, k) for a, b in ((0, 2), (2, 7), (7, 11))]
    for i, p in enumerate(parts):  # each shard's own top-k is the loop result on that shard
        a, b = ((0, 2), (2, 7), (7, 11))[i]
        shard_ref = reference_topk(train[a:b], labels[a:b], test, k)
        np.testing.assert_allclose(p[0].numpy(), [[s for s, _ in row] for row in shard_ref], rtol=1e-12)
        assert p[1].tolist() == [[lab for _, lab in row] for row in shard_ref]
    sims, nb_labels = merge_topk(parts, k)
    np.testing.assert_allclose(sims.numpy(), [[s for s, _ in row] for row in ref], rtol=1e-12)
    assert nb_labels.tolist() == [[lab for _, lab in row] for row in ref]
    # the vote, by hand: p(c|x) = sum over the top-k of exp(s / tau) [y == c]
    correct = {1: 0, 2: 0, 4: 0}
    for row, y in zip(ref, test_labels):
        for kk in correct:
            scores = [0.0, 0.0, 0.0]
            for s, lab in row[:kk]:
                scores[lab] += math.exp(s / tau)
            correct[kk] += int(max(range(3), key=lambda c: (scores[c], -c)) == y)
    res = knn_accuracy_from_topk(sims, nb_labels, test_labels, (1, 2, 4), num_classes=3)
    assert {kk: res[f"top1_k{kk}"] for kk in correct} == {kk: c / 6 for kk, c in correct.items()}


def test_merge_breaks_ties_by_part_order():
    sims_a = torch.tensor([[0.9, 0.5, 0.5]])
    sims_b = torch.tensor([[0.5, 0.4]])
    parts = [(sims_a, torch.tensor([[0, 1, 2]])), (sims_b, torch.tensor([[3, 4]]))]
    s, lab = merge_topk(parts, 4)
    assert s[0].tolist() == pytest.approx([0.9, 0.5, 0.5, 0.5]) and lab.tolist() == [[0, 1, 2, 3]]
    s, lab = merge_topk(parts[::-1], 4)
    assert lab.tolist() == [[0, 3, 1, 2]]  # the first part's tied entries come first
    s, lab = merge_topk([(np.zeros((2, 0)), np.zeros((2, 0), np.int64))], 3)  # numpy, empty
    assert s.shape == lab.shape == (2, 0)
    s, lab = merge_topk([(sims_a.double(), torch.tensor([[0, 1, 2]])), (sims_b, torch.tensor([[3, 4]]))], 2)
    assert s.dtype == torch.float64 and lab.tolist() == [[0, 1]]


def test_errors():
    sims, labels = torch.rand(4, 3).sort(dim=1, descending=True)[0], torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="at least one part"):
        merge_topk([], 3)
    with pytest.raises(ValueError, match=r"parts \[1\] have \[2\]"):
        merge_topk([(sims, labels), (sims[:2], labels[:2])], 3)
    with pytest.raises(ValueError, match=r"parts\[0\]: labels have shape \(4, 2\)"):
        merge_topk([(sims, labels[:, :2])], 3)
    with pytest.raises(ValueError, match="labels must have an integer dtype"):
        merge_topk([(sims, labels.float())], 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        merge_topk([(sims, labels)], 0)
    with pytest.raises(ValueError, match="test_labels has 3 entries"):
        knn_accuracy_from_topk(sims, labels, np.zeros(3, np.int64), (1,))
    with pytest.raises(ValueError, match="labels must lie in"):
        knn_accuracy_from_topk(sims, labels + 5, np.zeros(4, np.int64), (1,), num_classes=3)
    with pytest.raises(ValueError, match="k=4 exceeds the 3 neighbours"):
        knn_predict_from_topk(sims, labels, k=4, num_classes=2)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        knn_topk(np.zeros((0, 3)), np.zeros(0, np.int64), np.ones((2, 4)), 5)
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy_from_topk(sims, labels, np.zeros(4, np.int64), (1,), temperature=0)
