"""Keep probabilities (Eq. 4, Eq. 7), Bernoulli masks, masked logits; the epoch's SelectionCache against the
full-softmax computation it replaced (float64, queue wrap-around, multi-crop mask reuse, resume)."""
import math

import pytest
import torch
import torch.nn.functional as F
from references import hcsc_reference as ref

from hierclr.clustering import Prototypes, compose_assignments
from hierclr.config.pretrain import HCSCLossConfig
from hierclr.losses import (
    HCSCObjective,
    SelectionCache,
    apply_negative_mask,
    bernoulli_mask,
    icsc_loss,
    instance_keep_prob,
    pcsc_loss,
    prototype_keep_prob,
    queue_log_normaliser,
    selection,
)
from hierclr.models import MoCo


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_instance_keep_prob_matches_loops():
    queue, C = unit(9, 5, seed=1), unit(4, 5, seed=2)
    phi = torch.tensor([0.2, 0.05, 1e-5, 0.3], dtype=torch.float64)  # 1e-5 hits the 1e-3 floor
    assign = torch.tensor([0, 2, 2, 3, 1])  # repeated assignment: ties in the rows
    got = instance_keep_prob(queue, C, phi, assign)
    want = ref.instance_keep_prob(queue.tolist(), C.tolist(), phi.tolist(), assign.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert got.shape == (5, 9)
    torch.testing.assert_close(got[1], got[2])


def test_instance_keep_prob_hand_example():
    # one queue key equal to prototype 0, orthogonal to prototype 1, phi = 0.5 for both:
    # P(0) = e^2 / (e^2 + e^0); a query assigned to 0 keeps it with 1 - P(0), one assigned to 1 with P(0)
    queue = torch.tensor([[1.0, 0.0]])
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p0 = torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1)
    got = instance_keep_prob(queue, C, torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
    torch.testing.assert_close(got, torch.stack([1 - p0, p0])[:, None])


def test_prototype_keep_prob_matches_loops():
    C0, C1 = unit(7, 4, seed=3), unit(3, 4, seed=4)
    phi1 = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    parents = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pos, neg_ids = torch.tensor([0, 4, 4, 6]), torch.tensor([1, 2, 3, 5])
    got = prototype_keep_prob(C0, C1, phi1, parents, pos, neg_ids)
    want = ref.prototype_keep_prob(C0.tolist(), C1.tolist(), phi1.tolist(), parents.tolist(), pos.tolist(), neg_ids.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_bernoulli_mask_frequencies_follow_clamped_probabilities():
    p = torch.tensor([0.0, 0.25, 0.5, 1.0]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    m = bernoulli_mask(p, 1e-4, 0.999, generator=g)
    freq = m.mean(0)
    torch.testing.assert_close(freq, torch.tensor([1e-4, 0.25, 0.5, 0.999]), atol=0.01, rtol=0)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    m2 = bernoulli_mask(p, 1e-4, 0.999, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, m2)


def test_apply_negative_mask_modes():
    logits = torch.tensor([[0.5, -0.2, 0.9]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    torch.testing.assert_close(apply_negative_mask(logits, mask, "zero"), torch.tensor([[0.5, 0.0, 0.9]]))
    torch.testing.assert_close(apply_negative_mask(logits, mask, "remove"), torch.tensor([[0.5, float("-inf"), 0.9]]))
    assert apply_negative_mask(logits, None, "zero") is logits
    with pytest.raises(ValueError, match="negative_drop"):
        apply_negative_mask(logits, mask, "drop")


# ------------------------------------------------------------------ the O(B x Q) selection and its cache
def full_softmax_instance_keep_prob(queue, centroids, phi, assign):
    """hierclr's Eq. 4 before the cache (the reference): the whole (Q, K) softmax, every step."""
    logits = (queue @ centroids.T) / phi.clamp_min(1e-3)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return 1.0 - log_p[:, assign].T.exp()


def make_prototypes(n=30, sizes=(6, 3, 2), d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    cents = [unit(m, d, seed=seed + 10 + i) for i, m in enumerate(sizes)]
    parents = [torch.randint(0, sizes[i + 1], (sizes[i],), generator=g) for i in range(len(sizes) - 1)]
    phi = [0.02 + 0.3 * torch.rand(m, generator=g, dtype=torch.float64) for m in sizes]
    phi[0][0] = 1e-5  # under the 1e-3 floor
    return Prototypes(cents, parents, phi, compose_assignments(torch.randint(0, sizes[0], (n,), generator=g), parents))


def tiny_moco(queue_size=10, d=5):
    torch.manual_seed(0)
    return MoCo("resnet10", dim=d, hidden_dim=8, queue_size=queue_size, cifar_stem=True).double()


def test_queue_log_normaliser_in_blocks_is_the_logsumexp(monkeypatch):
    keys, C = unit(11, 5, seed=1), unit(4, 5, seed=2)
    phi = torch.tensor([0.2, 0.05, 1e-5, 0.3], dtype=torch.float64)
    monkeypatch.setattr(selection, "_LOG_NORM_BLOCK", 3)  # 4 blocks, the last one short
    want = torch.tensor([math.log(sum(math.exp(float(k @ c) / max(float(p), 1e-3)) for c, p in zip(C, phi)))
                         for k in keys], dtype=torch.float64)
    torch.testing.assert_close(queue_log_normaliser(keys, C, phi), want, rtol=1e-12, atol=1e-12)


def test_instance_keep_prob_with_log_norm_equals_the_full_softmax():
    queue, C = unit(9, 5, seed=1), unit(4, 5, seed=2)
    phi = torch.tensor([0.2, 0.05, 1e-5, 0.3], dtype=torch.float64)
    assign = torch.tensor([0, 2, 2, 3, 1])
    want = full_softmax_instance_keep_prob(queue, C, phi, assign)
    got = instance_keep_prob(queue, C, phi, assign, queue_log_normaliser(queue, C, phi))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(instance_keep_prob(queue, C, phi, assign), want, rtol=0, atol=1e-12)


def test_prototype_keep_prob_from_the_cached_log_softmax_equals_the_direct_one():
    P = make_prototypes()
    cache = SelectionCache(P, unit(10, 5, seed=3))
    pos, neg = P.assignments[torch.tensor([0, 4, 9]), 0], torch.tensor([5, 1, 2])
    direct = prototype_keep_prob(P.centroids[0], P.centroids[1], P.phi[1], P.parents[0], pos, neg)
    cached = prototype_keep_prob(P.centroids[0], P.centroids[1], P.phi[1], P.parents[0], pos, neg, cache.proto_log_s[0])
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-12)


def test_selection_cache_follows_enqueues_across_the_wrap_and_a_resume():
    """Queue of 10, batches of 4: the third enqueue wraps. After every enqueue the cached normalisers equal a
    fresh computation, and ICSC draws the same masks as the full-softmax reference with the same generator; a
    model restored from the state dict rebuilds the same cache from its queue."""
    P = make_prototypes()
    model = tiny_moco()
    cache = SelectionCache(P, model.queue)
    g = torch.Generator().manual_seed(5)
    for step in range(4):
        slots = model.enqueue(unit(4, 5, seed=100 + step), torch.randint(0, 30, (4,), generator=g))
        assert slots.tolist() == [(4 * step + i) % 10 for i in range(4)]
        cache.enqueued(model.queue, slots)
        fresh = torch.stack([queue_log_normaliser(model.queue, C, phi) for C, phi in zip(P.centroids, P.phi)])
        torch.testing.assert_close(cache.queue_log_norm, fresh, rtol=0, atol=1e-12)
        ids = torch.randint(0, 30, (3,), generator=g)
        q = unit(3, 5, seed=200 + step)
        _, got = icsc_loss(q, q, model.queue, P, ids, generator=torch.Generator().manual_seed(step), cache=cache)
        ref_gen = torch.Generator().manual_seed(step)
        for level, mask in enumerate(got["masks"]):
            keep = full_softmax_instance_keep_prob(model.queue, P.centroids[level], P.phi[level], P.assignments[ids, level])
            cached = instance_keep_prob(model.queue, P.centroids[level], P.phi[level], P.assignments[ids, level],
                                        cache.queue_log_norm[level])
            torch.testing.assert_close(cached, keep, rtol=0, atol=1e-12)
            assert torch.equal(mask, bernoulli_mask(keep, 0.0, 0.999, generator=ref_gen))
    resumed = tiny_moco()
    resumed.queue.zero_()
    resumed.load_state_dict(model.state_dict())
    torch.testing.assert_close(SelectionCache(P, resumed.queue).queue_log_norm, cache.queue_log_norm, rtol=0, atol=1e-12)


def test_objective_with_the_cache_draws_the_reference_masks_and_reuses_them_for_local_views():
    P = make_prototypes()
    cfg = HCSCLossConfig(warmup_epochs=0, selection_on_local=True)
    objective = HCSCObjective(cfg)
    queue, ids = unit(10, 5, seed=4), torch.tensor([1, 7, 7, 20])
    q, k, local = unit(4, 5, seed=5), unit(4, 5, seed=6), [unit(4, 5, seed=7), unit(4, 5, seed=8)]
    cache = objective.selection_cache(P, queue)
    runs = []
    for c in (None, cache):
        masks: list = []
        loss, metrics = objective(q, k, queue, P, ids, local_q=local, generator=torch.Generator().manual_seed(3),
                                  out_masks=masks, selection_cache=c)
        runs.append((loss, metrics, masks))
    (loss0, m0, masks0), (loss1, m1, masks1) = runs
    assert len(masks1) == 3 and all(torch.equal(a, b) for a, b in zip(masks0, masks1))
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-12)
    assert m0.keys() == m1.keys()
    # the local views' ICSC terms use the global view's masks: replaying them by hand gives the instance loss
    inst = sum(icsc_loss(v, k, queue, P, ids, masks=masks1)[0] for v in (q, *local))
    torch.testing.assert_close(m1["loss/instance"], inst, rtol=0, atol=1e-12)
    assert objective.selection_cache(None, queue) is None
    assert HCSCObjective(HCSCLossConfig(instance_selection=False, prototype_selection=False)).selection_cache(P, queue) is None


def test_a_cache_for_other_prototypes_is_refused():
    P, other = make_prototypes(seed=0), make_prototypes(seed=1)
    cache = SelectionCache(P, unit(10, 5, seed=1))
    q = unit(2, 5, seed=2)
    with pytest.raises(ValueError, match="SelectionCache was built for"):
        icsc_loss(q, q, unit(10, 5, seed=1), other, torch.tensor([0, 1]), cache=cache)
    with pytest.raises(ValueError, match="SelectionCache was built for"):
        pcsc_loss(q, other, torch.tensor([0, 1]), cache=cache)
    icsc_loss(q, q, unit(10, 5, seed=1), P.truncate(1), torch.tensor([0, 1]), cache=cache)  # finest level: covered
