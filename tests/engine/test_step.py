"""A tiny MoCo + HCSC run on CPU: the real step (clustering, selection, SGD, queue) lowers the loss."""
import torch

from hierclr.clustering import hierarchical_kmeans
from hierclr.config import HCSCLossConfig
from hierclr.engine import embed_features, hcsc_train_step
from hierclr.engine.local_run import eval_transform, moco_v2_augment, synthetic_images
from hierclr.losses import HCSCObjective
from hierclr.models import MoCo


def test_tiny_hcsc_run_reduces_the_loss():
    torch.manual_seed(0)
    images, _ = synthetic_images(64, 8, seed=0)
    model = MoCo("resnet18", dim=32, queue_size=64, cifar_stem=True)
    objective = HCSCObjective(HCSCLossConfig(warmup_epochs=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    augment = moco_v2_augment()
    ids_all = torch.arange(64)
    batches = [(eval_transform(images[s : s + 32]), ids_all[s : s + 32]) for s in (0, 32)]
    ids, feats = embed_features(model, batches)
    assert torch.equal(ids, ids_all) and torch.allclose(feats.norm(dim=1), torch.ones(64), atol=1e-5)
    protos = hierarchical_kmeans(feats, [8, 4, 2], nredo=1)

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
