"""phi (HCSC Eq. 3 as the reference code computes it) against a slow loop reference."""
import math

import numpy as np
import pytest
import torch

from hierclr.clustering import concentration


def linear_percentile(values, p):
    """numpy's default 'linear' percentile, written out."""
    s = sorted(values)
    pos = p / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def reference_phi(points, centroids, assign, temperature, smooth):
    M = len(centroids)
    members = [[] for _ in range(M)]
    for x, a in zip(points, assign):
        members[a].append(math.sqrt(sum((xi - ci) ** 2 for xi, ci in zip(x, centroids[a]))))
    phi = [0.0] * M
    for c in range(M):
        if len(members[c]) > 1:
            phi[c] = (sum(members[c]) / len(members[c])) / math.log(len(members[c]) + smooth)
    dmax = max(phi)
    phi = [dmax if len(members[c]) <= 1 else phi[c] for c in range(M)]
    lo, hi = linear_percentile(phi, 10), linear_percentile(phi, 90)
    phi = [min(max(v, lo), hi) for v in phi]
    mean = sum(phi) / M
    return [temperature * v / mean for v in phi]


def test_hand_computed_example_with_singleton_and_empty_cluster():
    # cluster 0: (0,0),(2,0) around (1,0): distances 1,1   -> 1 / log(2 + 10)
    # cluster 1: (0,1),(0,3),(0,5) around (0,3): 2,0,2      -> (4/3) / log(3 + 10)
    # cluster 2: a single point -> max of the others; cluster 3: empty -> max of the others
    points = [[0, 0], [2, 0], [0, 1], [0, 3], [0, 5], [7, 7]]
    centroids = [[1, 0], [0, 3], [7, 7], [9, 9]]
    assign = [0, 0, 1, 1, 1, 2]
    a, b = 1 / math.log(12), (4 / 3) / math.log(13)
    raw = [a, b, b, b]
    lo = a + 0.3 * (b - a)  # 10th percentile of 4 values: position 0.3
    clipped = [lo, b, b, b]  # 90th percentile is b
    mean = sum(clipped) / 4
    expected = [0.2 * v / mean for v in clipped]
    assert raw[0] < lo
    got = concentration(np.array(points, float), np.array(centroids, float), np.array(assign))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("temperature,smooth", [(0.2, 10.0), (0.1, 5.0), (0.5, 1.0)])
def test_matches_reference_on_random_clusters(rng, temperature, smooth):
    M, d = 25, 6
    centroids = rng.standard_normal((M, d))
    # sizes from 0 (empty) to 30, several singletons
    sizes = rng.choice([0, 1, 2, 5, 30], size=M)
    assign = np.repeat(np.arange(M), sizes)
    points = centroids[assign] + 0.3 * rng.standard_normal((len(assign), d))
    got = concentration(points, centroids, assign, temperature=temperature, smooth=smooth)
    ref = reference_phi(points.tolist(), centroids.tolist(), assign.tolist(), temperature, smooth)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    assert got.mean().item() == pytest.approx(temperature, rel=1e-5)


def test_accepts_torch_and_ties(rng):
    # identical spreads in every cluster: all phi equal -> all equal to temperature
    centroids = np.eye(4)
    points = np.concatenate([c + np.array([[0.1, 0, 0, 0], [-0.1, 0, 0, 0]]) for c in centroids])
    assign = np.repeat(np.arange(4), 2)
    got = concentration(torch.tensor(points), torch.tensor(centroids), torch.tensor(assign), temperature=0.3)
    np.testing.assert_allclose(got.numpy(), [0.3] * 4, rtol=1e-6)


def test_degenerate_all_singletons_gives_uniform_temperature():
    points = np.eye(3)
    got = concentration(points, points, np.arange(3), temperature=0.2)
    np.testing.assert_allclose(got.numpy(), [0.2] * 3)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN"):
        concentration(np.array([[np.nan, 0.0]]), np.zeros((1, 2)), np.array([0]))
    with pytest.raises(ValueError, match="assignments"):
        concentration(np.zeros((2, 2)), np.zeros((1, 2)), np.array([0, 3]))
    with pytest.raises(ValueError, match="temperature"):
        concentration(np.zeros((2, 2)), np.zeros((1, 2)), np.array([0, 0]), temperature=0)
