"""Slow, obviously-correct references for the HCSC losses: python loops over math.exp/log."""
import math


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def softmax_prob(logits, i):
    m = max(logits)
    return math.exp(logits[i] - m) / sum(math.exp(v - m) for v in logits)


def instance_keep_prob(queue, centroids, phi, assign):
    out = []
    for y in assign:
        row = []
        for z in queue:
            s = [dot(z, c) / max(p, 1e-3) for c, p in zip(centroids, phi)]
            row.append(1 - softmax_prob(s, y))
        out.append(row)
    return out


def prototype_keep_prob(centroids, next_centroids, next_phi, parents, pos, neg_ids):
    out = []
    for p in pos:
        row = []
        for j in neg_ids:
            s = [dot(centroids[j], c) / max(ph, 1e-3) for c, ph in zip(next_centroids, next_phi)]
            row.append(1 - softmax_prob(s, parents[p]))
        out.append(row)
    return out


def ce_first(logits):
    """-log softmax(logits)[0], where None entries are absent from the denominator."""
    present = [v for v in logits if v is not None]
    m = max(present)
    return -(logits[0] - m) + math.log(sum(math.exp(v - m) for v in present))


def info_nce(q, k, queue, T, mask=None, drop="zero"):
    total = 0.0
    for i in range(len(q)):
        logits = [dot(q[i], k[i]) / T]
        for j, z in enumerate(queue):
            kept = mask is None or mask[i][j] == 1
            if kept:
                logits.append(dot(q[i], z) / T)
            elif drop == "zero":
                logits.append(0.0)
            else:
                logits.append(None)
        total += ce_first(logits)
    return total / len(q)


def proto_nce_level(q, centroids, phi, pos, mask=None, drop="zero"):
    """ProtoNCE at one level; candidates = prototypes no sample of the batch is assigned to."""
    batch_pos = set(pos)
    total = 0.0
    for i in range(len(q)):
        logits = [dot(q[i], centroids[pos[i]]) / phi[pos[i]]]
        for j in range(len(centroids)):
            if j in batch_pos:
                continue
            kept = mask is None or mask[i][j] == 1
            if kept:
                logits.append(dot(q[i], centroids[j]) / phi[j])
            elif drop == "zero":
                logits.append(0.0)
        total += ce_first(logits)
    return total / len(q)
