"""PCL's ProtoNCE as ``salesforce/PCL`` ``pcl/builder.py`` (MoCo.forward) computes it, in plain Python loops.

Written from the official code's steps, not from hierclr: per clustering, ``proto_selected`` = the positive
prototype of every sample in the batch (batch order, duplicates kept) followed by the sampled negative
prototypes; ``logits_proto = q @ proto_selected.T``, each column divided by its prototype's density;
``labels_proto = arange(B)``; ``main_pcl.py`` averages the cross-entropies over the clusterings.
"""
from __future__ import annotations

import math


def proto_nce_level(q, centroids, density, im2cluster, index, neg_proto_id):
    pos_proto_id = [im2cluster[i] for i in index]
    selected = pos_proto_id + list(neg_proto_id)
    total = 0.0
    for i, qi in enumerate(q):
        logits = [sum(a * b for a, b in zip(qi, centroids[p])) / density[p] for p in selected]
        m = max(logits)
        total += -(logits[i] - m) + math.log(sum(math.exp(x - m) for x in logits))
    return total / len(q)


def negatives_of(im2cluster, index):
    """``set(range(max + 1)) - set(positives)``: every prototype that is no sample's positive (the set PCL
    samples ``r`` negatives from)."""
    return sorted(set(range(max(im2cluster) + 1)) - {im2cluster[i] for i in index})
