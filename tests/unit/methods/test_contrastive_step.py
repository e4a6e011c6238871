"""A tiny MoCo + HCSC run on CPU: the real step (clustering, selection, SGD, queue) lowers the loss; the step
counts its ICSC masks against the labels of the queue they were drawn on."""
import torch
import torch.nn.functional as F

from hierclr.clustering import KMeansSettings, Prototypes, compose_assignments, hierarchical_kmeans
from hierclr.config.pretrain import HCSCLossConfig
from hierclr.eval.selection_quality import COUNT_NAMES, SelectionCounter, selection_counts
from hierclr.losses import HCSCObjective
from hierclr.methods.contrastive_step import embed_features, hcsc_train_step
from hierclr.models import MoCo
from hierclr.runtime.local import eval_transform, moco_v2_augment, synthetic_images


def test_tiny_hcsc_run_reduces_the_loss():
    torch.manual_seed(0)
    images, _ = synthetic_images(64, 8, seed=0)
    model = MoCo("resnet10", dim=32, hidden_dim=128, queue_size=64, cifar_stem=True)
    objective = HCSCObjective(HCSCLossConfig(warmup_epochs=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    augment = moco_v2_augment()
    ids_all = torch.arange(64)
    batches = [(eval_transform(images[s : s + 32]), ids_all[s : s + 32]) for s in (0, 32)]
    ids, feats = embed_features(model, batches)
    assert torch.equal(ids, ids_all) and torch.allclose(feats.norm(dim=1), torch.ones(64), atol=1e-5)
    protos = hierarchical_kmeans(feats, [8, 4, 2], KMeansSettings(nredo=1))

    # a fixed evaluation: same views, same queue snapshot, same selection draws, before and after
    eval_ids = torch.arange(16)
    view_q = torch.stack([augment(x) for x in images[eval_ids]])
    view_k = torch.stack([augment(x) for x in images[eval_ids]])
    queue0 = model.queue.clone()

    @torch.no_grad()
    def fixed_loss():
        # train-mode BN (batch statistics, as in the step): running stats mean little after 30 steps
        state = {n: b.clone() for n, b in model.named_buffers()}
        q, k = model.forward_query(view_q), model.forward_key(view_k)
        for n, b in model.named_buffers():  # leave no trace of the evaluation in BN running stats
            b.copy_(state[n])
        return objective(q, k, queue0, protos, eval_ids, generator=torch.Generator().manual_seed(0))[0].item()

    before = fixed_loss()
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        sel = torch.randperm(64, generator=gen)[:16]
        im_q = torch.stack([augment(x) for x in images[sel]])
        im_k = torch.stack([augment(x) for x in images[sel]])
        metrics = hcsc_train_step(model, objective, optimizer, im_q, im_k, sel, protos, generator=gen)
        assert torch.isfinite(metrics["loss/total"])
    after = fixed_loss()
    print(f"fixed-batch loss before {before:.4f} after {after:.4f}")
    assert after < 0.85 * before, (before, after)
    # the queue received the last batch's keys and ids
    ptr = int(model.queue_ptr)
    assert torch.equal(model.queue_ids[(ptr - 16) % 64 : (ptr - 16) % 64 + 16], sel)


def test_step_counts_selection_against_the_queue_before_its_enqueue():
    """Masks do not depend on the queries (Eq. 4: queue, prototypes, assignments), so replaying the objective on
    the same queue snapshots with the same generator gives the step's masks; the counts are theirs, against the
    queue *before* the step's enqueue (first step: an empty queue, nothing counted)."""
    torch.manual_seed(0)
    B, N = 4, 12
    model = MoCo("resnet10", dim=8, hidden_dim=16, queue_size=2 * B, cifar_stem=True)
    objective = HCSCObjective(HCSCLossConfig(warmup_epochs=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    parents = [torch.tensor([0, 1, 0, 1])]
    protos = Prototypes([F.normalize(torch.randn(m, 8, generator=g), dim=1) for m in (4, 2)], parents,
                        [torch.full((m,), 0.2) for m in (4, 2)], compose_assignments(torch.arange(N) % 4, parents))
    labels = torch.tensor([0, 1, 2, -1] * 3)  # every fourth image unlabelled
    counter = SelectionCounter(labels, num_levels=2)
    images = torch.randn(N, 3, 16, 16, generator=g)
    step_gen = torch.Generator().manual_seed(7)
    snapshots, per_step = [], []
    for ids in (torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 12)):
        snapshots.append((model.queue.clone(), model.queue_ids.clone(), ids))
        before = counter.counts.clone()
        hcsc_train_step(model, objective, optimizer, images[ids], images[ids].flip(3), ids, protos,
                        generator=step_gen, selection=counter)
        per_step.append(counter.counts - before)
    assert per_step[0].sum() == 0  # the queue was empty (ids -1) when the first masks were drawn
    # second step: 4 keys in the queue (ids 0-3, one unlabelled) x 3 labelled queries, at each level
    assert per_step[1][:, COUNT_NAMES.index("pairs")].tolist() == [9, 9]
    replay = torch.Generator().manual_seed(7)
    q = F.normalize(torch.randn(B, 8, generator=g), dim=1)  # any queries: the draws do not depend on them
    for (queue, queue_ids, ids), got in zip(snapshots, per_step):
        masks: list = []
        objective(q, q, queue, protos, ids, generator=replay, out_masks=masks)
        queue_labels = torch.where(queue_ids >= 0, labels[queue_ids.clamp_min(0)], -1)
        want = [[int(selection_counts(m, labels[ids], queue_labels)[n]) for n in COUNT_NAMES] for m in masks]
        assert got.tolist() == want


def test_step_refreshes_the_selection_cache_at_every_enqueue():
    """Through the real step (queue of 8, batches of 4: wraps at the third): the cache the loss read equals one
    built from scratch on the final queue, and the step's losses equal those of the cache-less step."""
    g = torch.Generator().manual_seed(1)
    parents = [torch.tensor([0, 1, 0, 1])]
    protos = Prototypes([F.normalize(torch.randn(m, 8, generator=g), dim=1) for m in (4, 2)], parents,
                        [torch.full((m,), 0.2) for m in (4, 2)], compose_assignments(torch.arange(12) % 4, parents))
    images = torch.randn(12, 3, 16, 16, generator=g)
    objective = HCSCObjective(HCSCLossConfig(warmup_epochs=0))
    losses, models, caches = [], [], []
    for use_cache in (False, True):
        torch.manual_seed(0)
        model = MoCo("resnet10", dim=8, hidden_dim=16, queue_size=8, cifar_stem=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        cache = objective.selection_cache(protos, model.queue) if use_cache else None
        gen = torch.Generator().manual_seed(7)
        run = [hcsc_train_step(model, objective, optimizer, images[ids], images[ids].flip(3), ids, protos,
                               generator=gen, selection_cache=cache)["loss/total"]
               for ids in (torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 12))]
        losses.append(torch.stack(run))
        models.append(model)
        caches.append(cache)
    torch.testing.assert_close(losses[1], losses[0])
    fresh = objective.selection_cache(protos, models[1].queue)
    torch.testing.assert_close(caches[1].queue_log_norm, fresh.queue_log_norm, rtol=0, atol=1e-5)
    assert int(models[1].queue_ptr) == 4
