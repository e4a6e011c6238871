"""One HCSC training step and the E-step's feature extraction, as plain torch.

The Ray Train loop (one per worker) calls these; keeping them free of Ray lets a unit test or a
notebook run exactly the step that the cluster runs.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hierclr.clustering.prototypes import Prototypes
from hierclr.losses.selection import SelectionCache
from hierclr.methods.key_bank import KeyBank
from hierclr.models.moco import MoCo

if TYPE_CHECKING:
    from hierclr.eval.selection_quality import SelectionCounter


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
    amp_dtype: torch.dtype | None = None,
    selection: SelectionCounter | None = None,
    selection_cache: SelectionCache | None = None,
    key_bank: KeyBank | None = None,
) -> dict[str, Tensor]:
    """Forward all views, loss (ICSC + PCSC, or InfoNCE in warm-up), SGD step, then enqueue keys.

    Order as in the reference code: query forward; momentum update; key forward; loss against the
    queue as it was *before* this batch; optimizer step; enqueue this batch's keys and ids. Local
    (multi-crop) views go through ``model`` itself, so a DDP wrapper reduces their gradients too.
    ``amp_dtype`` (e.g. ``torch.bfloat16``) autocasts the encoders; the loss is computed in fp32.
    ``selection`` (HCSC with instance selection, after warm-up): counts the ICSC masks of this step against
    the labels of the queue they were drawn on (paper Fig. 5), on the device.
    ``selection_cache``: the epoch's :class:`SelectionCache` (from ``objective.selection_cache``), used by the
    loss and refreshed here for the enqueued keys. ``key_bank`` (``clustering.features: train_keys``): records the
    enqueued keys (every rank's) of the ids this rank owns.
    Returns the objective's detached metrics.
    """
    core = _core(model)
    device_type = im_q.device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(im_q, im_k, list(local_views)) if local_views else model(im_q, im_k)
    q, k = out[0].float(), out[1].float()
    local_q = [v.float() for v in out[2]] if local_views else []
    masks: list[Tensor] = []
    hook = {"out_masks": masks} if selection is not None else {}
    if selection_cache is not None:
        hook["selection_cache"] = selection_cache
    loss, metrics = objective(q, k, core.queue, prototypes, ids, local_q=local_q, generator=generator, **hook)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if selection is not None:
        selection.add(masks, ids, core.queue_ids)  # before the enqueue: the queue the masks were drawn on
    slots = core.enqueue(k, ids)
    if selection_cache is not None:
        selection_cache.enqueued(core.queue, slots)
    if key_bank is not None:
        key_bank.record(core.queue_ids[slots], core.queue[slots])
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


@torch.no_grad()
def embed_pass(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    *,
    head: bool = True,
    backbone: bool = False,
    device=None,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """One pass over ``(images, ids, labels)`` batches in eval mode, computing what the epoch needs:

    * ``head``: the momentum encoder's normalised head output (the E-step's clustering features);
    * ``backbone``: the query encoder's avgpool features (kNN monitoring, as evaluation reads them).

    Returns CPU tensors ``ids``, ``labels`` and ``head`` / ``backbone`` (float32) in iteration order;
    an empty pass returns empty tensors (a worker may get no rows of a small split). Train/eval mode
    is restored afterwards.
    """
    core = _core(model)
    was_training = core.training
    core.eval()
    out: dict[str, list[Tensor]] = {"ids": [], "labels": [], "head": [], "backbone": []}
    try:
        for images, ids, labels in batches:
            if device is not None:
                images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if head:
                    out["head"].append(torch.nn.functional.normalize(core.encoder_k(images).float(), dim=1).cpu())
                if backbone:
                    out["backbone"].append(core.backbone_features(images).float().cpu())
            out["ids"].append(ids.cpu().long())
            out["labels"].append(labels.cpu().long())
    finally:
        core.train(was_training)
    dims = {"head": core.dim, "backbone": core.feature_dim}
    result = {"ids": torch.cat(out["ids"]) if out["ids"] else torch.zeros(0, dtype=torch.long),
              "labels": torch.cat(out["labels"]) if out["labels"] else torch.zeros(0, dtype=torch.long)}
    for key in ("head", "backbone"):
        if (head if key == "head" else backbone):
            result[key] = torch.cat(out[key]) if out[key] else torch.zeros(0, dims[key])
    return result
