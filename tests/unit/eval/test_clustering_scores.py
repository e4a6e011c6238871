"""NMI / AMI / Hungarian accuracy against sklearn and brute force over all matchings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from hierclr.eval import clustering_scores, hungarian_accuracy


def brute_force_acc(labels, assignments):
    """Best accuracy over every injective map clusters -> classes (or classes -> clusters
    when there are more classes), counted sample by sample with python loops."""
    labels = [int(v) for v in labels]
    assignments = [int(v) for v in assignments]
    clusters = sorted(set(assignments))
    classes = sorted(set(labels))
    n = len(labels)
    best = 0
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            m = dict(zip(clusters, image))
            best = max(best, sum(1 for y, a in zip(labels, assignments) if m[a] == y))
    else:  # more clusters than classes: each class gets a distinct cluster, the rest unmatched
        for image in itertools.permutations(clusters, len(classes)):
            inv = dict(zip(image, classes))
            best = max(best, sum(1 for y, a in zip(labels, assignments) if inv.get(a) == y))
    return best / n


@pytest.mark.parametrize("seed", range(6))
def test_square_4x4_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=40)
    assignments = rng.integers(0, 4, size=40)
    assert hungarian_accuracy(labels, assignments) == pytest.approx(brute_force_acc(labels, assignments), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_clusters,n_classes", [(6, 3), (5, 2), (2, 5), (3, 6), (1, 4), (4, 1)])
def test_rectangular_matches_brute_force(seed, n_clusters, n_classes):
    rng = np.random.default_rng(100 + seed)
    n = 50
    labels = rng.integers(0, n_classes, size=n)
    # partially informative assignments so the optimum is not trivial
    assignments = np.where(rng.random(n) < 0.5, labels % n_clusters, rng.integers(0, n_clusters, size=n))
    ref = brute_force_acc(labels, assignments)
    got = clustering_scores(labels, assignments)["acc"]
    assert got == pytest.approx(ref, abs=1e-12)
    assert hungarian_accuracy(labels, assignments) == pytest.approx(ref, abs=1e-12)


def test_more_clusters_than_classes_hand_example():
    # class 0 split into clusters 0 and 1, class 1 is cluster 2: one of the two halves is wrong
    labels = np.array([0, 0, 0, 0, 1, 1])
    assignments = np.array([0, 0, 0, 1, 2, 2])
    assert hungarian_accuracy(labels, assignments) == pytest.approx(5 / 6)
    # fewer clusters than classes: everything in one cluster matches the largest class
    assert hungarian_accuracy(labels, np.zeros(6, dtype=int)) == pytest.approx(4 / 6)


def test_nmi_ami_equal_sklearn():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=200)
    assignments = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 8, size=200))
    res = clustering_scores(labels, assignments)
    assert set(res) == {"nmi", "ami", "acc"}
    assert res["nmi"] == pytest.approx(normalized_mutual_info_score(labels, assignments), abs=1e-12)
    assert res["ami"] == pytest.approx(adjusted_mutual_info_score(labels, assignments), abs=1e-12)
    assert res["nmi"] == pytest.approx(
        normalized_mutual_info_score(labels, assignments, average_method="arithmetic"), abs=1e-12
    )
    assert all(isinstance(v, float) for v in res.values())


def test_permuted_labels_give_perfect_scores():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 6, size=100)
    perm = np.array([3, 5, 0, 1, 4, 2])
    assignments = perm[labels] + 10  # renamed and non-contiguous cluster ids
    res = clustering_scores(labels, assignments)
    assert res["acc"] == 1.0
    assert res["nmi"] == pytest.approx(1.0)
    assert res["ami"] == pytest.approx(1.0)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, size=60)
    assignments = rng.integers(0, 5, size=60)
    a = clustering_scores(labels, assignments)
    b = clustering_scores(torch.from_numpy(labels), torch.from_numpy(assignments).int())
    c = clustering_scores(labels.tolist(), torch.from_numpy(assignments))
    assert a == b == c


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same length"):
        clustering_scores(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        clustering_scores(np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(ValueError, match="labels must be 1-D"):
        clustering_scores(np.zeros((3, 2), dtype=int), np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="assignments must be 1-D"):
        hungarian_accuracy(np.zeros(4, dtype=int), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        hungarian_accuracy(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integer or string labels"):
        hungarian_accuracy(np.array([0, 1]), np.array([1 + 1j, 0j]))
