"""Per-level accuracy, parent tables and the hierarchical violation rate on hand-made cases and loops."""
import numpy as np
import pytest
import torch

from hierclr.eval.hierarchical import hierarchical_violation_rate, hierarchy_metrics, level_accuracy, parent_tables

# 6 fine classes -> 3 mid classes -> 2 top classes
LEVEL_MAP = np.array([
    [0, 0, 0],
    [1, 0, 0],
    [2, 1, 0],
    [3, 1, 0],
    [4, 2, 1],
    [5, 2, 1],
])


def test_parent_tables_of_a_tree():
    parents = parent_tables(LEVEL_MAP)
    assert len(parents) == 2
    np.testing.assert_array_equal(parents[0], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(parents[1], [0, 0, 1])
    assert all(p.dtype == np.int64 for p in parents)
    assert parent_tables(LEVEL_MAP[:, :1]) == []
    # a tensor works too
    np.testing.assert_array_equal(parent_tables(torch.as_tensor(LEVEL_MAP))[1], [0, 0, 1])


def test_parent_tables_marks_unreached_classes():
    # mid class 1 is reached by no fine class: it has no parent (-1)
    lm = np.array([[0, 0, 0], [1, 2, 1]])
    parents = parent_tables(lm)
    np.testing.assert_array_equal(parents[1], [0, -1, 1])


def test_parent_tables_rejects_a_non_tree():
    lm = LEVEL_MAP.copy()
    lm[3, 2] = 1  # mid class 1 now has parents 0 (fine 2) and 1 (fine 3)
    with pytest.raises(ValueError, match="class 1 of level 1 has two parents at level 2") as err:
        parent_tables(lm)
    assert {"0 (fine class 2)", "1 (fine class 3)"} <= {part.strip() for part in str(err.value).split(": ")[-1].split("and")}
    with pytest.raises(ValueError, match="every fine class needs a class"):
        parent_tables(np.array([[0, -1], [1, 0]]))
    with pytest.raises(ValueError, match="integer array"):
        parent_tables(LEVEL_MAP.astype(float))


def test_hvr_on_hand_made_predictions():
    parents = parent_tables(LEVEL_MAP)  # [0,0,1,1,2,2], [0,0,1]
    pred = np.array([
        [0, 0, 0],  # 0->0 ok, 0->0 ok                        : consistent
        [2, 0, 0],  # parent(2)=1 != 0 (pair 0), 0->0 ok       : violated
        [4, 2, 0],  # 4->2 ok, parent(2)=1 != 0 (pair 1)       : violated
        [5, 1, 1],  # parent(5)=2 != 1, parent(1)=0 != 1       : violated (both pairs)
        [3, 1, 0],  # 3->1 ok, 1->0 ok                          : consistent
    ])
    hvr, per_pair = hierarchical_violation_rate(pred, parents)
    assert hvr == pytest.approx(3 / 5)  # rows 1, 2, 3
    np.testing.assert_allclose(per_pair, [2 / 5, 2 / 5])  # pair 0: rows 1, 3; pair 1: rows 2, 3
    # tensors in, same answer
    hvr_t, per_pair_t = hierarchical_violation_rate(torch.as_tensor(pred), [torch.as_tensor(p) for p in parents])
    assert hvr_t == hvr
    np.testing.assert_array_equal(per_pair_t, per_pair)


def test_hvr_matches_a_loop_reference(rng):
    parents = parent_tables(LEVEL_MAP)
    sizes = (6, 3, 2)
    pred = np.stack([rng.integers(0, s, 200) for s in sizes], axis=1)
    any_bad, pair_bad = 0, [0, 0]
    for row in pred.tolist():
        bad = [parents[l][row[l]] != row[l + 1] for l in range(2)]
        any_bad += any(bad)
        pair_bad = [a + b for a, b in zip(pair_bad, bad)]
    hvr, per_pair = hierarchical_violation_rate(pred, parents)
    assert hvr == pytest.approx(any_bad / 200)
    np.testing.assert_allclose(per_pair, [b / 200 for b in pair_bad])


def test_hvr_edge_cases():
    parents = parent_tables(LEVEL_MAP)
    hvr, per_pair = hierarchical_violation_rate(np.zeros((0, 3), dtype=np.int64), parents)
    assert hvr == 0.0 and per_pair.shape == (2,) and not per_pair.any()
    hvr, per_pair = hierarchical_violation_rate(np.array([[3], [1]]), [])
    assert hvr == 0.0 and per_pair.shape == (0,)
    with pytest.raises(ValueError, match="need 2 parent tables"):
        hierarchical_violation_rate(np.zeros((2, 3), dtype=np.int64), parents[:1])
    with pytest.raises(ValueError, match="predicted class 6 at level 0 is outside"):
        hierarchical_violation_rate(np.array([[6, 0, 0]]), parents)
    # a class no fine class reaches never has a consistent parent
    gap = parent_tables(np.array([[0, 0, 0], [1, 2, 1]]))
    assert hierarchical_violation_rate(np.array([[1, 1, 0]]), gap)[0] == 1.0


def test_level_accuracy_ignores_unlabelled_rows():
    true = np.array([
        [0, 0, 0],
        [2, 1, -1],
        [4, -1, -1],
        [5, 2, 1],
    ])
    pred = np.array([
        [0, 0, 1],  # level 2 wrong
        [3, 1, 1],  # level 0 wrong; level 2 ignored
        [4, 0, 0],  # levels 1, 2 ignored
        [5, 2, 1],
    ])
    # level 0: 3/4 right; level 1: rows 0, 1, 3 labelled, all right; level 2: rows 0, 3 labelled, 1 right
    np.testing.assert_allclose(level_accuracy(pred, true), [0.75, 1.0, 0.5])
    acc = level_accuracy(pred[:, :2], np.array([[0, -1], [2, -1], [4, -1], [5, -1]]))
    assert acc[0] == 0.75 and np.isnan(acc[1])
    assert np.isnan(level_accuracy(np.zeros((0, 2), dtype=int), np.zeros((0, 2), dtype=int))).all()
    with pytest.raises(ValueError, match="shape"):
        level_accuracy(pred, true[:, :2])


def test_hierarchy_metrics_keys_and_values():
    parents = parent_tables(LEVEL_MAP)
    true = LEVEL_MAP[[0, 2, 4, 5]]
    pred = np.array([[0, 0, 0], [2, 0, 0], [4, 2, 1], [4, 2, 0]])
    m = hierarchy_metrics(pred, true, parents)
    assert list(m) == ["acc/level0", "acc/level1", "acc/level2", "hvr", "hvr/level0-1", "hvr/level1-2"]
    # acc0: rows 0, 1, 2 (3/4); acc1: rows 0, 2, 3 (3/4); acc2: rows 0, 1, 2 (3/4)
    assert m["acc/level0"] == m["acc/level1"] == m["acc/level2"] == pytest.approx(0.75)
    # row 1 violates pair 0 (parent(2) = 1 != 0), row 3 violates pair 1 (parent(2) = 1 != 0)
    assert m["hvr"] == pytest.approx(0.5)
    assert m["hvr/level0-1"] == m["hvr/level1-2"] == pytest.approx(0.25)
    assert all(isinstance(v, float) for v in m.values())
