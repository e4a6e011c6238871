"""kNN weighted vote (HCSC Eq. 11) against a brute-force numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hierclr.eval import knn_accuracy, knn_classify, knn_predict


def reference_scores(train, train_labels, test, k, temperature, num_classes):
    """Obviously-correct Eq. 11: full cosine matrix in float64, argsort, loop voting."""
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    scores = np.zeros((test.shape[0], num_classes))
    for t in range(test.shape[0]):
        sims = np.array([float(np.dot(test[t], train[j])) for j in range(train.shape[0])])
        order = np.argsort(-sims, kind="stable")[:k]
        for j in order:
            scores[t, int(train_labels[j])] += math.exp(sims[j] / temperature)
    return scores


def make_data(seed, n_train, n_test, d, num_classes, scale=True):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_train, d))
    test = rng.normal(size=(n_test, d))
    if scale:  # deliberately unnormalised rows of very different norms
        train *= rng.uniform(0.1, 10.0, size=(n_train, 1))
        test *= rng.uniform(0.1, 10.0, size=(n_test, 1))
    labels = rng.integers(0, num_classes, size=n_train)
    return train, labels, test


@pytest.mark.parametrize("k", [1, 5, 17, 60])
@pytest.mark.parametrize("chunk_size,block", [(7, 11), (1024, None), (3, 60), (50, 1)])
@pytest.mark.parametrize("num_classes", [3, 10])
def test_knn_predict_matches_reference_torch(k, chunk_size, block, num_classes):
    train, labels, test = make_data(k * 100 + num_classes, 60, 23, 8, num_classes)
    ref = reference_scores(train, labels, test, k, 0.07, num_classes)
    got = knn_predict(
        torch.from_numpy(train),
        torch.from_numpy(labels),
        torch.from_numpy(test),
        k=k,
        num_classes=num_classes,
        chunk_size=chunk_size,
        train_block_size=block,
    )
    assert got.shape == (23, num_classes)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=0)
    # float32 inputs: same up to float tolerance (exp amplifies sim errors by 1/tau)
    got32 = knn_predict(
        torch.from_numpy(train).float(),
        torch.from_numpy(labels),
        torch.from_numpy(test).float(),
        k=k,
        num_classes=num_classes,
        chunk_size=chunk_size,
        train_block_size=block,
    )
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref, rtol=1e-4, atol=0)


@pytest.mark.parametrize("k", [1, 9, 40])
@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_knn_predict_matches_reference_faiss(k, chunk_size):
    train, labels, test = make_data(k, 40, 19, 6, 4)
    ref = reference_scores(train, labels, test, k, 0.1, 4)
    got = knn_predict(
        train.astype(np.float32),
        labels,
        test.astype(np.float32),
        k=k,
        temperature=0.1,
        num_classes=4,
        chunk_size=chunk_size,
        backend="faiss",
        train_block_size=13,
    )
    assert isinstance(got, torch.Tensor) and got.shape == (19, 4)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=0)
    got_torch = knn_predict(train, labels, test, k=k, temperature=0.1, num_classes=4, chunk_size=chunk_size)
    np.testing.assert_allclose(got.numpy(), got_torch.numpy(), rtol=1e-4, atol=0)


def test_numpy_inputs_and_unnormalised_equal_normalised():
    train, labels, test = make_data(3, 30, 10, 5, 5)
    a = knn_predict(train, labels, test, k=7, num_classes=5)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    b = knn_predict(tn, labels, qn, k=7, num_classes=5)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    c = knn_predict(train * 1000.0, labels, test * 0.001, k=7, num_classes=5)
    np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-12)


def test_k_equals_n_train():
    train, labels, test = make_data(4, 12, 5, 3, 3)
    got = knn_predict(train, labels, test, k=12, num_classes=3, chunk_size=2, train_block_size=5)
    ref = reference_scores(train, labels, test, 12, 0.07, 3)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9)
    got_f = knn_predict(train, labels, test, k=12, num_classes=3, backend="faiss")
    np.testing.assert_allclose(got_f.numpy(), ref, rtol=1e-4)


def test_hand_computed_tiny_example():
    # 4 training points in 2-D (unnormalised), one test point along +x.
    train = np.array([[2.0, 0.0], [0.0, 3.0], [-0.5, 0.0], [4.0, 4.0]])
    labels = np.array([0, 1, 1, 1])
    test = np.array([[5.0, 0.0]])
    # cosine sims to the test point: 1, 0, -1, 1/sqrt(2); ranking: p0, p3, p1, p2
    s3 = 1.0 / math.sqrt(2.0)
    expected = {
        1: [math.exp(1.0 / 0.07), 0.0],
        2: [math.exp(1.0 / 0.07), math.exp(s3 / 0.07)],
        3: [math.exp(1.0 / 0.07), math.exp(s3 / 0.07) + math.exp(0.0 / 0.07)],
        4: [math.exp(1.0 / 0.07), math.exp(s3 / 0.07) + 1.0 + math.exp(-1.0 / 0.07)],
    }
    for k, exp_scores in expected.items():
        for backend in ("torch", "faiss"):
            got = knn_predict(
                train, labels, test, k=k, num_classes=2, backend=backend, chunk_size=1, train_block_size=3
            )
            rtol = 1e-9 if backend == "torch" else 1e-5
            np.testing.assert_allclose(got.numpy()[0], exp_scores, rtol=rtol, atol=1e-12)
    assert knn_classify(train, labels, test, k=2, num_classes=2).tolist() == [0]
    # exp(1/0.07) ~ 1.6e6 beats exp(0.707/0.07) ~ 2.4e4 (tiny sanity check of the numbers)
    assert 1.6e6 < math.exp(1.0 / 0.07) < 1.7e6


def test_ties_duplicate_train_points():
    """Each train point appears twice with the same label: scores equal the reference
    whatever order topk picks among the tied copies (odd k splits a tied pair)."""
    base, base_labels, test = make_data(5, 15, 9, 4, 4)
    train = np.concatenate([base, base * 2.0])  # same direction => exactly tied cosine
    labels = np.concatenate([base_labels, base_labels])
    for k in (1, 3, 7, 30):
        ref = reference_scores(train, labels, test, k, 0.07, 4)
        for backend, block, rtol in (("torch", 4, 1e-9), ("torch", None, 1e-9), ("faiss", None, 1e-4)):
            got = knn_predict(
                train, labels, test, k=k, num_classes=4, chunk_size=4, backend=backend, train_block_size=block
            )
            np.testing.assert_allclose(got.numpy(), ref, rtol=rtol)


def test_argmax_tie_picks_lowest_class():
    # two train points at the same position with different labels, k=2 => equal scores
    train = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = np.array([2, 1, 0])
    test = np.array([[1.0, 0.0]])
    scores = knn_predict(train, labels, test, k=2, num_classes=3)
    assert scores[0, 1] == scores[0, 2]
    assert knn_classify(train, labels, test, k=2, num_classes=3).tolist() == [1]


def test_knn_classify_is_argmax():
    train, labels, test = make_data(6, 50, 20, 5, 6)
    scores = knn_predict(train, labels, test, k=10, num_classes=6)
    pred = knn_classify(train, labels, test, k=10, num_classes=6)
    assert pred.dtype == torch.long
    assert torch.equal(pred, scores.argmax(dim=1))
    ref = reference_scores(train, labels, test, 10, 0.07, 6)
    assert pred.tolist() == ref.argmax(axis=1).tolist()


def test_empty_test_set():
    train, labels, _ = make_data(7, 10, 1, 3, 2)
    out = knn_predict(train, labels, np.zeros((0, 3)), k=3, num_classes=2)
    assert out.shape == (0, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": 11}, "exceeds the number of training samples"),
        ({"k": 2.5}, "k must be an integer"),
        ({"num_classes": 2}, r"train_labels must lie in \[0, num_classes=2\)"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"backend": "annoy"}, "backend"),
        ({"train_block_size": 0}, "train_block_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    train, labels, test = make_data(8, 10, 4, 3, 3)
    labels[0] = 2
    args = {"k": 3, "num_classes": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        knn_predict(train, labels, test, **args)


def test_bad_inputs():
    train, labels, test = make_data(9, 10, 4, 3, 3)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        knn_predict(train, labels, test[:, :2], k=3, num_classes=3)
    with pytest.raises(ValueError, match="train_features must be 2-D"):
        knn_predict(train[0], labels, test, k=3, num_classes=3)
    with pytest.raises(ValueError, match="train_labels has 9 entries"):
        knn_predict(train, labels[:9], test, k=3, num_classes=3)
    with pytest.raises(ValueError, match="train_labels must be 1-D"):
        knn_predict(train, labels[:, None], test, k=3, num_classes=3)
    with pytest.raises(ValueError, match="integer dtype"):
        knn_predict(train, labels.astype(np.float64), test, k=3, num_classes=3)
    neg = labels.copy()
    neg[3] = -1
    with pytest.raises(ValueError, match="train_labels must lie in"):
        knn_predict(train, neg, test, k=3, num_classes=3)
    nan_train = train.copy()
    nan_train[2, 1] = np.nan
    with pytest.raises(ValueError, match="train_features contain NaN"):
        knn_predict(nan_train, labels, test, k=3, num_classes=3)
    nan_test = torch.from_numpy(test.copy())
    nan_test[0, 0] = float("nan")
    with pytest.raises(ValueError, match="test_features contain NaN"):
        knn_predict(train, labels, nan_test, k=3, num_classes=3)
    with pytest.raises(ValueError, match="train_features is empty"):
        knn_predict(np.zeros((0, 3)), labels[:0], test, k=1, num_classes=3)


# ----------------------------------------------------------------------------- knn_accuracy
def test_knn_accuracy_matches_per_k_predict():
    train, labels, test = make_data(10, 80, 40, 4, 5)
    test_labels = np.random.default_rng(11).integers(0, 5, size=40)
    ks = (1, 3, 10, 25)
    for backend in ("torch", "faiss"):
        res = knn_accuracy(
            train, labels, test, test_labels, ks=ks, num_classes=5, chunk_size=9, backend=backend, train_block_size=17
        )
        assert set(res) == {f"top1_k{k}" for k in ks} | {"top1_best", "best_k"}
        for k in ks:
            ref = reference_scores(train, labels, test, k, 0.07, 5).argmax(axis=1)
            expected = float(np.mean(ref == test_labels))
            pred = knn_classify(train, labels, test, k=k, num_classes=5, backend=backend)
            assert res[f"top1_k{k}"] == pytest.approx(expected, abs=1e-12)
            assert res[f"top1_k{k}"] == pytest.approx(float((pred.numpy() == test_labels).mean()), abs=1e-12)
            assert 0.0 <= res[f"top1_k{k}"] <= 1.0
        accs = [res[f"top1_k{k}"] for k in ks]
        assert res["top1_best"] == max(accs)
        assert res["best_k"] == ks[int(np.argmax(accs))]  # first (smallest) k among equal maxima


def test_knn_accuracy_separable_clusters_is_one():
    rng = np.random.default_rng(12)
    centres = np.eye(4) * 10.0
    train_labels = np.repeat(np.arange(4), 30)
    test_labels = np.repeat(np.arange(4), 10)
    train = centres[train_labels] + rng.normal(scale=0.1, size=(120, 4))
    test = centres[test_labels] + rng.normal(scale=0.1, size=(40, 4))
    res = knn_accuracy(train, train_labels, test, test_labels, ks=(1, 10, 20), chunk_size=7)
    assert res == {"top1_k1": 1.0, "top1_k10": 1.0, "top1_k20": 1.0, "top1_best": 1.0, "best_k": 1}
    # even k = n_train: own-cluster weights exp(~1/0.07) dwarf the others exp(~0/0.07)
    res = knn_accuracy(train, train_labels, test, test_labels, ks=(120,))
    assert res["top1_k120"] == 1.0


def test_knn_accuracy_caps_k_with_warning():
    train, labels, test = make_data(13, 20, 10, 3, 3)
    test_labels = np.random.default_rng(14).integers(0, 3, size=10)
    with pytest.warns(UserWarning, match="exceed n_train=20"):
        res = knn_accuracy(train, labels, test, test_labels, ks=(5, 200))
    ref = reference_scores(train, labels, test, 20, 0.07, 3).argmax(axis=1)
    assert res["top1_k200"] == pytest.approx(float(np.mean(ref == test_labels)))
    assert "top1_k5" in res


def test_knn_accuracy_infers_num_classes_and_validates():
    train, labels, test = make_data(15, 20, 6, 3, 3)
    test_labels = np.array([0, 1, 2, 5, 0, 1])  # class 5 never in train: always wrong
    res = knn_accuracy(train, labels, test, test_labels, ks=(3,))
    pred = knn_classify(train, labels, test, k=3, num_classes=6).numpy()
    assert res["top1_k3"] == pytest.approx(float(np.mean(pred == test_labels)))
    with pytest.raises(ValueError, match="test_labels must lie in"):
        knn_accuracy(train, labels, test, test_labels, ks=(3,), num_classes=4)
    with pytest.raises(ValueError, match="test_labels has 5 entries"):
        knn_accuracy(train, labels, test, test_labels[:5], ks=(3,))
    with pytest.raises(ValueError, match="ks must contain"):
        knn_accuracy(train, labels, test, test_labels, ks=())
    with pytest.raises(ValueError, match="k in ks must be >= 1"):
        knn_accuracy(train, labels, test, test_labels, ks=(0, 3))
    with pytest.raises(ValueError, match="empty"):
        knn_accuracy(train, labels, test[:0], test_labels[:0], ks=(3,))
