"""Prototype-level x label-level AMI (HCSC Table 11) against a slow, explicit AMI written out below."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hierclr.eval import hierarchy_ami
from hierclr.eval.hierarchy_ami import prototype_label_ami


def reference_ami(u: list[int], v: list[int]) -> float:
    """Adjusted mutual information (Vinh et al. 2010), arithmetic-mean normaliser, natural log, with loops.

    AMI = (MI - E[MI]) / (mean(H(U), H(V)) - E[MI]); E[MI] under the hypergeometric model of random
    labelings with the same cluster sizes.
    """
    n = len(u)
    us, vs = sorted(set(u)), sorted(set(v))
    table = [[0] * len(vs) for _ in us]
    for x, y in zip(u, v):
        table[us.index(x)][vs.index(y)] += 1
    a = [sum(row) for row in table]
    b = [sum(table[i][j] for i in range(len(us))) for j in range(len(vs))]
    mi = 0.0
    for i in range(len(us)):
        for j in range(len(vs)):
            if table[i][j]:
                mi += table[i][j] / n * math.log(n * table[i][j] / (a[i] * b[j]))
    h_u = -sum(x / n * math.log(x / n) for x in a)
    h_v = -sum(x / n * math.log(x / n) for x in b)
    lf = lambda k: math.lgamma(k + 1)  # log k!
    emi = 0.0
    for ai in a:
        for bj in b:
            for nij in range(max(1, ai + bj - n), min(ai, bj) + 1):
                log_p = (lf(ai) + lf(bj) + lf(n - ai) + lf(n - bj)
                         - lf(n) - lf(nij) - lf(ai - nij) - lf(bj - nij) - lf(n - ai - bj + nij))
                emi += nij / n * math.log(n * nij / (ai * bj)) * math.exp(log_p)
    return (mi - emi) / ((h_u + h_v) / 2 - emi)


def _random_case(rng, n=90, proto_sizes=(7, 4, 2), label_sizes=(5, 2), missing=0.15, agree=0.0):
    a = np.stack([rng.integers(0, k, n) for k in proto_sizes], 1)
    y = np.stack([rng.integers(0, k, n) for k in label_sizes], 1)
    follow = rng.random(n) < agree  # these labels follow the prototypes: AMI well above 0
    y[follow] = a[follow][:, : len(label_sizes)] % np.asarray(label_sizes)
    a[rng.random(n) < missing] = -1  # unassigned ids: every level
    y[rng.random(n) < missing] = -1  # unlabelled ids
    y[rng.random(n) < missing, 1] = -1  # and some labelled at the fine level only
    return a, y


def test_matches_the_explicit_reference(rng):
    for agree in (0.0, 0.5, 0.9):
        a, y = _random_case(rng, agree=agree)
        got = prototype_label_ami(a, y, max_samples=None)
        assert agree == 0.0 or got["ami/label0"] > 0.1
        for l in range(a.shape[1]):
            for m in range(y.shape[1]):
                ok = (a[:, l] >= 0) & (y[:, m] >= 0)
                want = reference_ami(a[ok, l].tolist(), y[ok, m].tolist())
                assert got[f"ami/proto{l}_label{m}"] == pytest.approx(want, abs=1e-9)


def test_perfect_agreement_is_one_and_unrelated_is_near_zero(rng):
    y = rng.integers(0, 6, 300)
    perm = rng.permutation(6)
    got = prototype_label_ami(perm[y][:, None], y[:, None])
    assert got["ami/label0"] == pytest.approx(1.0, abs=1e-12)
    noise = prototype_label_ami(rng.integers(0, 6, (300, 1)), y[:, None])
    assert abs(noise["ami/label0"]) < 0.05


def test_minus_one_rows_are_excluded_per_pair(rng):
    a, y = _random_case(rng, missing=0.0)
    a2, y2 = a.copy(), y.copy()
    a2[:10] = -1
    y2[10:20, 1] = -1  # level-1 label missing: those rows still count for label level 0
    got = prototype_label_ami(a2, y2, max_samples=None)
    for l in range(3):
        assert got[f"ami/proto{l}_label0"] == pytest.approx(
            prototype_label_ami(a[10:, l], y[10:, 0], max_samples=None)["ami/label0"], abs=1e-12)
        assert got[f"ami/proto{l}_label1"] == pytest.approx(
            prototype_label_ami(a[20:, l], y[20:, 1], max_samples=None)["ami/label0"], abs=1e-12)
    # what the excluded rows hold does not matter
    y3 = y2.copy()
    y3[:10] = rng.integers(0, 2, (10, 2))
    assert prototype_label_ami(a2, y3, max_samples=None) == got


def test_subsample_is_seeded_sized_and_shared_by_pairs(rng, monkeypatch):
    a, y = _random_case(rng, n=3000, missing=0.1)
    seen = []

    def spy(labels_true, labels_pred):
        seen.append((labels_true.copy(), labels_pred.copy()))
        return real(labels_true, labels_pred)

    real = hierarchy_ami.adjusted_mutual_info_score
    monkeypatch.setattr(hierarchy_ami, "adjusted_mutual_info_score", spy)
    first = prototype_label_ami(a, y, max_samples=500, seed=3)
    assert [len(t) for t, _ in seen] == [500] * 6
    # the same rows for every pair with the same valid rows: label level 0 scored against levels 0, 1, 2
    by_label0 = [t for k, (t, _) in enumerate(seen) if k % 2 == 0]
    assert all(np.array_equal(by_label0[0], t) for t in by_label0)
    seen.clear()
    assert prototype_label_ami(a, y, max_samples=500, seed=3) == first
    assert prototype_label_ami(a, y, max_samples=500, seed=4) != first
    seen.clear()
    full = prototype_label_ami(a, y, max_samples=10_000)  # more than the valid rows: no subsample
    assert full == prototype_label_ami(a, y, max_samples=None)
    assert len(seen[0][0]) == int(((a[:, 0] >= 0) & (y[:, 0] >= 0)).sum())


def test_keys_and_table11_convention(rng):
    _, y = _random_case(rng, missing=0.0)
    one = prototype_label_ami(rng.integers(0, 7, (90, 1)), y)  # the paper's single 6000-prototype level
    assert set(one) == {"ami/proto0_label0", "ami/proto0_label1", "ami/label0", "ami/label1"}
    assert one["ami/label0"] == one["ami/proto0_label0"] and one["ami/label1"] == one["ami/proto0_label1"]
    a, _ = _random_case(rng, missing=0.0)
    three = prototype_label_ami(torch.as_tensor(a), torch.as_tensor(y))  # tensors accepted
    assert set(three) == {f"ami/proto{l}_label{m}" for l in range(3) for m in range(2)} | {"ami/label0", "ami/label1"}
    assert three["ami/label0"] == three["ami/proto0_label0"] and three["ami/label1"] == three["ami/proto1_label1"]
    assert all(isinstance(v, float) for v in three.values())


def test_empty_and_bad_input(rng):
    a = rng.integers(0, 3, (20, 2))
    assert prototype_label_ami(a, np.full((20, 2), -1)) == {}
    with pytest.raises(ValueError, match="20 rows but labels have 19"):
        prototype_label_ami(a, np.zeros((19, 1), np.int64))
    with pytest.raises(ValueError, match="-2"):
        prototype_label_ami(a, np.full((20, 1), -2))
    with pytest.raises(ValueError, match="integer"):
        prototype_label_ami(a.astype(float), np.zeros((20, 1), np.int64))


def _many_clusters(rng, n, classes=200, per_class=3):
    """Prototypes that split each class in ``per_class`` and a half of the rows assigned at random."""
    y = rng.integers(0, classes, n)
    a = y * per_class + rng.integers(0, per_class, n)
    noise = rng.random(n) < 0.5
    a[noise] = rng.integers(0, classes * per_class, int(noise.sum()))
    return a, y


def test_default_is_the_full_ami_even_past_50k_rows(rng):
    """Issue 17 item 1: the reported AMI is over every row unless a subsample is asked for."""
    from sklearn.metrics import adjusted_mutual_info_score

    a, y = _many_clusters(rng, 60_000)
    got = prototype_label_ami(a, y)["ami/label0"]
    assert got == adjusted_mutual_info_score(y, a)
    assert got == prototype_label_ami(a, y, max_samples=None)["ami/label0"]


def test_a_subsample_is_biased_low_not_just_noisy(rng):
    """Why the subsample is opt-in: fewer rows per (cluster, class) cell shrink the AMI for every seed."""
    a, y = _many_clusters(rng, 60_000)
    full = prototype_label_ami(a, y)["ami/label0"]
    subs = [prototype_label_ami(a, y, max_samples=5000, seed=s)["ami/label0"] for s in range(3)]
    assert max(subs) < full - 0.05


def test_configs_default_to_the_full_ami():
    from hierclr.config.evaluate import HierarchyProtocol
    from hierclr.config.pretrain import EvalSection

    assert EvalSection().ami_max_samples is None
    assert HierarchyProtocol().max_samples is None
