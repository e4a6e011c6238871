"""Negative-selection quality (HCSC Fig. 5): counts by hand and against a loop, ratios of summed counts, the
per-step counter (labels looked up by id, unlabelled and empty queue slots left out)."""
from __future__ import annotations

import pytest
import torch

from hierclr.eval.selection_quality import (
    COUNT_NAMES,
    SelectionCounter,
    selection_counts,
    selection_metrics,
    selection_quality,
)


def as_ints(counts: dict) -> dict[str, int]:
    return {k: int(v) for k, v in counts.items()}


# queries: classes 0, 1 and one unlabelled; queue: classes 0, 1, 0, unlabelled, 2
QUERY = torch.tensor([0, 1, -1])
QUEUE = torch.tensor([0, 1, 0, -1, 2])
KEEP = torch.tensor([
    [0, 1, 1, 0, 1],  # query 0 (class 0): drops j=0 (class 0: a false negative) and j=3 (unlabelled: ignored)
    [1, 0, 1, 0, 0],  # query 1 (class 1): drops j=1 (class 1: false negative), j=3 (ignored), j=4 (class 2)
    [0, 0, 0, 0, 0],  # unlabelled query: ignored entirely
], dtype=torch.float32)
# By hand, labelled queue entries j = 0, 1, 2, 4 for the two labelled queries:
#   pairs = 2 x 4 = 8
#   false negatives: query 0 -> j=0, 2; query 1 -> j=1                    = 3
#   true negatives:  query 0 -> j=1, 4; query 1 -> j=0, 2, 4              = 5
#   dropped:         query 0 -> j=0;    query 1 -> j=1, 4                 = 3
#   dropped false negatives: (0, j=0), (1, j=1)                           = 2
#   kept true negatives: query 0 -> j=1, 4; query 1 -> j=0, 2             = 4
BY_HAND = {"pairs": 8, "false_negatives": 3, "true_negatives": 5, "dropped": 3, "dropped_false_negatives": 2,
           "kept_true_negatives": 4}


def test_counts_and_ratios_by_hand():
    counts = selection_counts(KEEP, QUERY, QUEUE)
    assert set(counts) == set(COUNT_NAMES)
    assert all(v.dtype == torch.long and v.dim() == 0 for v in counts.values())
    assert as_ints(counts) == BY_HAND
    assert as_ints(selection_counts(KEEP.bool(), QUERY, QUEUE)) == BY_HAND  # bool masks too
    q = selection_quality(counts)
    assert q == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "kept_true_negatives": 4 / 5,
                               "false_negative_rate": 3 / 8}, rel=1e-12)


def test_undefined_ratios_are_omitted_not_nan():
    keep_all = torch.ones(3, 5)
    q = selection_quality(selection_counts(keep_all, QUERY, QUEUE))
    # nothing dropped: precision undefined (omitted); recall 0 of 3 false negatives; every true negative kept
    assert q == pytest.approx({"recall": 0.0, "kept_true_negatives": 1.0, "false_negative_rate": 3 / 8})
    # an unfilled queue (every label -1) or unlabelled queries: no pair at all, every count 0, no ratio
    empty_queue = selection_counts(KEEP, QUERY, torch.full((5,), -1))
    assert as_ints(empty_queue) == dict.fromkeys(COUNT_NAMES, 0)
    assert selection_quality(empty_queue) == {}
    assert selection_quality(selection_counts(KEEP, torch.full((3,), -1), QUEUE)) == {}
    # one class only: no true negative, so kept_true_negatives is omitted
    same = selection_quality(selection_counts(torch.tensor([[0.0, 1.0]]), torch.tensor([4]), torch.tensor([4, 4])))
    assert same == {"precision": 1.0, "recall": 0.5, "false_negative_rate": 1.0}


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="queue_labels"):
        selection_counts(KEEP, QUERY, QUEUE[:4])


def loop_counts(keep, query_labels, queue_labels) -> dict[str, int]:
    out = dict.fromkeys(COUNT_NAMES, 0)
    for i, a in enumerate(query_labels.tolist()):
        for j, b in enumerate(queue_labels.tolist()):
            if a < 0 or b < 0:
                continue
            kept = bool(keep[i, j] != 0)
            out["pairs"] += 1
            out["false_negatives"] += a == b
            out["true_negatives"] += a != b
            out["dropped"] += not kept
            out["dropped_false_negatives"] += a == b and not kept
            out["kept_true_negatives"] += a != b and kept
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_match_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, K, C = 7, 23, 4
    keep = torch.bernoulli(torch.full((B, K), 0.6), generator=g)
    query_labels = torch.randint(-1, C, (B,), generator=g)
    queue_labels = torch.randint(-1, C, (K,), generator=g)
    assert as_ints(selection_counts(keep, query_labels, queue_labels)) == loop_counts(keep, query_labels, queue_labels)


def test_counter_sums_counts_over_steps_then_divides():
    """Two steps, two levels; labels looked up by dataset id; queue slots with id -1 (not yet filled) and ids of
    unlabelled images are left out. The epoch's ratio is a ratio of summed counts, not a mean of step ratios."""
    labels_by_id = torch.tensor([0, 0, 1, 1, 2, -1])  # id 5 is unlabelled
    counter = SelectionCounter(labels_by_id, num_levels=2)
    # step 1: queries ids 0 (class 0), 2 (class 1); queue ids [1, -1, 3, 5] -> classes [0, empty, 1, unlabelled]
    ids1, qids1 = torch.tensor([0, 2]), torch.tensor([1, -1, 3, 5])
    l0_1 = torch.tensor([[0.0, 0, 1, 0], [1, 1, 1, 1]])  # level 0: query 0 drops its false negative (id 1)
    l1_1 = torch.ones(2, 4)  # level 1 keeps everything
    counter.add([l0_1, l1_1], ids1, qids1)
    # step 2: queries ids 4 (class 2), 1 (class 0); queue ids [0, 2, 4, 3] -> classes [0, 1, 2, 1]
    ids2, qids2 = torch.tensor([4, 1]), torch.tensor([0, 2, 4, 3])
    l0_2 = torch.tensor([[0.0, 0, 1, 0], [1, 1, 1, 1]])  # query id 4 drops three true negatives (ids 0, 2, 3)
    l1_2 = torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 1]])  # both queries drop their false negative
    counter.add([l0_2, l1_2], ids2, qids2)
    # by hand, level 0: step 1 has 2 x 2 labelled pairs (queue ids 1, 3), false negatives (0,1), (2,3);
    # dropped (0, id 1) -> a false negative. Step 2: 2 x 4 pairs, false negatives (4,4), (1,0);
    # dropped (4, ids 0, 2, 3): three true negatives.
    want0 = {"pairs": 4 + 8, "false_negatives": 2 + 2, "true_negatives": 2 + 6, "dropped": 1 + 3,
             "dropped_false_negatives": 1 + 0, "kept_true_negatives": 2 + 3}
    want1 = {"pairs": 12, "false_negatives": 4, "true_negatives": 8, "dropped": 0 + 2,
             "dropped_false_negatives": 0 + 2, "kept_true_negatives": 2 + 6}
    assert counter.counts.dtype == torch.long and counter.counts.shape == (2, len(COUNT_NAMES))
    assert dict(zip(COUNT_NAMES, counter.counts[0].tolist())) == want0
    assert dict(zip(COUNT_NAMES, counter.counts[1].tolist())) == want1
    # the loop reference, step by step
    for level, (m1, m2) in enumerate([(l0_1, l0_2), (l1_1, l1_2)]):
        ref = [loop_counts(m, labels_by_id[i], torch.where(q >= 0, labels_by_id[q.clamp_min(0)], -1))
               for m, i, q in ((m1, ids1, qids1), (m2, ids2, qids2))]
        assert dict(zip(COUNT_NAMES, counter.counts[level].tolist())) == {k: ref[0][k] + ref[1][k] for k in COUNT_NAMES}
    m = selection_metrics(counter.counts)
    assert m == pytest.approx({
        "selection/false_negative_rate": 4 / 12,
        "selection/precision_l0": 1 / 4,  # not the mean of the steps' 1/1 and 0/3
        "selection/recall_l0": 1 / 4,
        "selection/kept_true_negatives_l0": 5 / 8,
        "selection/precision_l1": 2 / 2,
        "selection/recall_l1": 2 / 4,
        "selection/kept_true_negatives_l1": 8 / 8,
    }, rel=1e-12)


def test_selection_metrics_omit_undefined_levels():
    counts = torch.tensor([[10, 2, 8, 3, 1, 6], [10, 2, 8, 0, 0, 8]])  # level 1 dropped nothing
    m = selection_metrics(counts)
    assert "selection/precision_l1" not in m
    assert m["selection/recall_l1"] == 0.0 and m["selection/precision_l0"] == pytest.approx(1 / 3)
    assert selection_metrics(torch.zeros(3, len(COUNT_NAMES), dtype=torch.long)) == {}


def test_counter_checks_its_inputs():
    counter = SelectionCounter(torch.tensor([0, 1]), num_levels=3)
    with pytest.raises(ValueError, match="expects 3 ICSC masks"):
        counter.add([], torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        SelectionCounter(torch.zeros(4, 2, dtype=torch.long), num_levels=1)
