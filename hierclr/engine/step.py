"""One HCSC training step and the E-step's feature extraction, as plain torch.

The Ray Train loop (one per worker) calls these; keeping them free of Ray lets a unit test or a
notebook run exactly the step that the cluster runs.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from hierclr.clustering.prototypes import Prototypes
from hierclr.models.moco import MoCo


def _core(model: nn.Module) -> MoCo:
    """The MoCo module under an optional DDP wrapper."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def hcsc_train_step(
    model: nn.Module,
    objective,
    optimizer: torch.optim.Optimizer,
    im_q: Tensor,
    im_k: Tensor,
    ids: Tensor,
    prototypes: Prototypes | None,
    *,
    local_views: Sequence[Tensor] = (),
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Forward both views, loss (ICSC + PCSC, or InfoNCE in warm-up), SGD step, then enqueue keys.

    Order as in the reference code: query forward; momentum update; key forward; loss against the
    queue as it was *before* this batch; optimizer step; enqueue this batch's keys and ids.
    Returns the objective's detached metrics.
    """
    core = _core(model)
    q, k = model(im_q, im_k)
    local_q = [core.forward_query(v) for v in local_views]
    loss, metrics = objective(q, k, core.queue, prototypes, ids, local_q=local_q, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    core.enqueue(k, ids)
    return metrics


@torch.no_grad()
def embed_features(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device=None) -> tuple[Tensor, Tensor]:
    """Momentum-encoder embeddings (normalised head output, eval mode) of ``(images, ids)`` batches.

    Returns ``(ids, features)`` on the CPU in iteration order; the caller (or the clustering
    service) scatters them by id. The model's train/eval mode is restored afterwards.
    """
    core = _core(model)
    was_training = core.training
    core.eval()
    all_ids, feats = [], []
    try:
        for images, ids in batches:
            if device is not None:
                images = images.to(device, non_blocking=True)
            feats.append(core.embed(images).float().cpu())
            all_ids.append(ids.cpu())
    finally:
        core.train(was_training)
    if not feats:
        raise ValueError("embed_features: the embedding stream yielded no batch")
    return torch.cat(all_ids), torch.cat(feats)
