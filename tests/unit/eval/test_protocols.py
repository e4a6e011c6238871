"""The feature-based protocols against brute-force references and data with a known answer."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hierclr.clustering import KMeansSettings
from hierclr.eval.protocols import (
    clustering_protocol,
    hierarchy_protocol,
    knn_protocol,
    prototype_clustering_protocol,
)


def _knn_reference(train, ty, val, vy, k, t, c):
    """Explicit loops: cosine similarity to every training row, top-k, exp(s / t) vote per class."""
    def unit(v):
        n = max(math.sqrt(sum(a * a for a in v)), 1e-12)
        return [a / n for a in v]
    tr = [unit(list(map(float, r))) for r in train]
    top1 = top5 = 0
    for x, y in zip(val, vy):
        xv = unit(list(map(float, x)))
        sims = sorted(((sum(a * b for a, b in zip(xv, r)), i) for i, r in enumerate(tr)), key=lambda p: -p[0])[:k]
        score = [0.0] * c
        for s, i in sims:
            score[ty[i]] += math.exp(s / t)
        order = sorted(range(c), key=lambda j: (-score[j], j))
        top1 += order[0] == y
        top5 += y in order[:5]
    return top1 / len(vy), top5 / len(vy)


def test_knn_protocol_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    c = 7
    centers = rng.normal(size=(c, 6))
    ty = rng.integers(0, c, 60)
    vy = rng.integers(0, c, 25)
    train = centers[ty] + rng.normal(scale=1.2, size=(60, 6))
    val = centers[vy] + rng.normal(scale=1.2, size=(25, 6))
    out = knn_protocol(train, ty, val, vy, ks=(3, 10, 20), temperature=0.07, num_classes=c)
    for k in (3, 10, 20):
        t1, t5 = _knn_reference(train, ty, val, vy, k, 0.07, c)
        assert out[f"knn/top1_k{k}"] == pytest.approx(t1)
        assert out[f"knn/top5_k{k}"] == pytest.approx(t5)
    best = max((3, 10, 20), key=lambda k: (out[f"knn/top1_k{k}"], -k))
    assert out["knn/best_k"] == best and out["knn/top1_best"] == out[f"knn/top1_k{best}"]
    capped = knn_protocol(train, ty, val, vy, ks=(200,), num_classes=c)  # k > n_train: all 60 neighbours
    assert capped["knn/top1_k200"] == pytest.approx(_knn_reference(train, ty, val, vy, 60, 0.07, c)[0])


def test_clustering_protocol_on_separated_blobs():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 50)
    x = np.eye(8)[y] * 10 + rng.normal(scale=0.05, size=(200, 8))
    out = clustering_protocol(x, y, (4, 8), KMeansSettings(seed=0, backend="faiss"))
    assert out["clustering/kmeans_k4/acc"] == pytest.approx(1.0)
    assert out["clustering/kmeans_k4/nmi"] == pytest.approx(1.0)
    assert out["clustering/kmeans_k4/ami"] == pytest.approx(1.0)
    assert out["clustering/kmeans_k8/acc"] < 1.0 and out["clustering/kmeans_k8/nmi"] > 0.7  # over-clustered: split blobs
    with pytest.raises(ValueError, match="exceeds"):
        clustering_protocol(x, y, (500,), KMeansSettings())


def test_prototype_clustering_is_the_papers_protocol_on_the_models_own_assignments(rng):
    """HCSC Table 4 / App. A: the checkpoint's prototypes of a level against the labels of the same rows, no
    K-means; rows unassigned (-1) or unlabelled (-1) are left out per level."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    y = rng.integers(0, 5, 300)
    a0 = np.where(rng.random(300) < 0.7, y * 2 + rng.integers(0, 2, 300), rng.integers(0, 10, 300))
    a = np.stack([a0, a0 // 2], 1)
    a[:7] = -1
    y[7:12] = -1
    out = prototype_clustering_protocol(a, y)
    keep = slice(12, None)
    for level, k in ((0, 10), (1, 5)):
        pre = f"clustering/prototypes_l{level}"
        assert out[f"{pre}/ami"] == pytest.approx(adjusted_mutual_info_score(y[keep], a[keep, level]), abs=1e-12)
        assert out[f"{pre}/nmi"] == pytest.approx(normalized_mutual_info_score(y[keep], a[keep, level]), abs=1e-12)
        assert out[f"{pre}/k"] == k
    # level 1 = the class of every level-0 prototype: Hungarian accuracy counted by hand
    match = {c: c for c in range(5)}
    assert out["clustering/prototypes_l1/acc"] == pytest.approx(np.mean([match[p] == t for p, t in
                                                                         zip(a[keep, 1], y[keep])]))
    assert set(prototype_clustering_protocol(a, y, levels=(1,))) == {f"clustering/prototypes_l1/{m}"
                                                                     for m in ("nmi", "ami", "acc", "k")}
    with pytest.raises(ValueError, match="level 2 out of range"):
        prototype_clustering_protocol(a, y, levels=(2,))


def test_clustering_methods_config():
    from hierclr.config.evaluate import load_evaluate_config

    assert load_evaluate_config(None, ["source=x"]).clustering.methods == ("prototypes", "kmeans")
    with pytest.raises(ValueError, match="clustering.methods"):
        load_evaluate_config(None, ["source=x", "clustering.methods=[kmeans,kmeans]"])


def test_hierarchy_protocol_recovers_a_planted_two_level_hierarchy():
    rng = np.random.default_rng(2)
    fine = np.repeat(np.arange(6), 40)
    coarse = fine // 3
    centers = np.concatenate([np.eye(2)[np.arange(6) // 3] * 8, np.eye(6) * 2], axis=1)
    x = centers[fine] + rng.normal(scale=0.05, size=(240, 8))
    labels = np.stack([fine, coarse], 1)
    out = hierarchy_protocol(x, labels, seed=0, backend="faiss")
    assert out["hierarchy/kmeans_label0"] == pytest.approx(1.0, abs=1e-6)
    assert out["hierarchy/kmeans_label1"] == pytest.approx(1.0, abs=1e-6)
    protos = np.stack([fine, coarse], 1)  # perfect prototype assignments: AMI 1 at every level
    out = hierarchy_protocol(x, labels, prototype_assignments=protos, seed=0, backend="faiss")
    assert out["hierarchy/prototypes_label0"] == pytest.approx(1.0) and out["hierarchy/prototypes_label1"] == \
        pytest.approx(1.0)


def test_per_class_subset_is_seeded_per_class_and_order_free():
    from hierclr.eval.subsets import per_class_subset

    ids = np.arange(100, 400)
    labels = np.repeat([0, 1, 2], 100)
    labels[5] = -1  # unlabelled: never drawn
    a = per_class_subset(ids, labels, 0.1, seed=3)
    perm = np.random.default_rng(0).permutation(300)
    b = per_class_subset(ids[perm], labels[perm], 0.1, seed=3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0)
    by_class = {c: np.isin(a, ids[labels == c]).sum() for c in (0, 1, 2)}
    assert by_class == {0: 10, 1: 10, 2: 10} and 105 not in a
    assert len(per_class_subset(ids, labels, 0.001)) == 3  # at least one per class
    assert not np.array_equal(a, per_class_subset(ids, labels, 0.1, seed=4))
    with pytest.raises(ValueError, match="fraction"):
        per_class_subset(ids, labels, 0.0)


def test_evaluation_runs_are_named_after_what_they_evaluate():
    from hierclr.runtime.evaluate import evaluation_run_name

    assert evaluation_run_name("cifar10", "hierclr_runs/demo-20261204-1/") == "evaluate cifar10 demo-20261204-1"
    assert (evaluation_run_name("digits", "/r/demo-1/checkpoint_000003")
            == "evaluate digits demo-1/checkpoint_000003")
    assert evaluation_run_name("digits", "/r/demo-1/best_encoder.pt") == "evaluate digits demo-1/best_encoder.pt"
    assert (evaluation_run_name("cifar10", "mlflow:5b7cdfc919104c93be2ce43560bfcbe2/encoder_best")
            == "evaluate cifar10 mlflow:5b7cdfc9/encoder_best")
    assert evaluation_run_name("cifar10", "models:/m-0123456789abcdef") == "evaluate cifar10 models:m-012345"
    names = {evaluation_run_name("cifar10", s) for s in ("runs/a-1", "runs/a-2", "mlflow:abc", "runs/a-1/best_encoder.pt")}
    assert len(names) == 4
