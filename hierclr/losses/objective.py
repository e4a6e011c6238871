"""Training objectives: HCSC (Eq. 10) with warm-up and the Table 5 ablations, and PCL v2."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hierclr.clustering.prototypes import Prototypes
from hierclr.config.pretrain import HCSCLossConfig
from hierclr.losses.hcsc import icsc_loss, pcsc_loss
from hierclr.losses.infonce import info_nce
from hierclr.losses.protonce import proto_nce_loss
from hierclr.losses.selection import SelectionCache


class HCSCObjective:
    """``L = L_ICSC + L_PCSC`` (Eq. 10) as the reference code runs it, switchable per Table 5.

    * Warm-up (``prototypes is None``, the first ``warmup_epochs``): plain MoCo v2 InfoNCE.
    * Instance term: ICSC summed (or averaged) over levels; with instance selection off, one plain
      InfoNCE (the reference code's non-selective path, not L copies of it).
    * Prototype term: PCSC averaged over levels, with or without prototype selection.
    * ``hierarchical_prototypes=False``: only level 0 is used (single-level prototypes, so PCSC has
      no parent level and no selection).
    * Multi-crop: every local view is a query against the global key and the queue (reusing the
      global view's instance masks when ``selection_on_local``, summed over levels and views) and
      gets its own PCSC term (averaged over levels, summed over views), as the reference code does.

    Returns ``(loss, metrics)``; metrics are detached scalar tensors keyed ``loss/...`` and
    ``kept_fraction/...`` (convert with ``.item()`` only when logging).

    ``out_masks``: a list that receives the ICSC keep masks this call drew for the global view, one ``(B, Q)``
    0/1 tensor per level (the very tensors the loss used); left empty when no instance selection ran (warm-up,
    ``instance_loss`` or ``instance_selection`` off). Passing it changes neither the loss nor the draws.
    """

    def __init__(self, cfg: HCSCLossConfig | None = None) -> None:
        self.cfg = cfg or HCSCLossConfig()

    def in_warmup(self, epoch: int) -> bool:
        return epoch < self.cfg.warmup_epochs

    def selection_cache(self, prototypes: Prototypes | None, queue: Tensor) -> SelectionCache | None:
        """A :class:`SelectionCache` for this epoch's prototypes and the queue as it is now, or None where no
        keep probability is drawn (warm-up, selection off)."""
        cfg = self.cfg
        selects = (cfg.instance_loss and cfg.instance_selection) or (cfg.prototype_loss and cfg.prototype_selection)
        if prototypes is None or not selects:
            return None
        protos = prototypes if cfg.hierarchical_prototypes else prototypes.truncate(1)
        return SelectionCache(protos, queue.detach())

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        queue: Tensor,
        prototypes: Prototypes | None,
        ids: Tensor,
        *,
        local_q: Sequence[Tensor] = (),
        generator: torch.Generator | None = None,
        out_masks: list[Tensor] | None = None,
        selection_cache: SelectionCache | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        T = cfg.temperature
        metrics: dict[str, Tensor] = {}
        if prototypes is None:
            loss = info_nce(q, k, queue, T) + sum((info_nce(v, k, queue, T) for v in local_q), q.new_zeros(()))
            metrics["loss/instance"] = loss.detach()
            metrics["loss/total"] = loss.detach()
            return loss, metrics

        protos = prototypes if cfg.hierarchical_prototypes else prototypes.truncate(1)
        loss = q.new_zeros(())
        if cfg.instance_loss:
            inst = self._instance_term(q, k, queue, protos, ids, local_q, generator, metrics, out_masks,
                                       selection_cache)
            metrics["loss/instance"] = inst.detach()
            loss = loss + inst
        if cfg.prototype_loss:
            proto, info = pcsc_loss(
                q, protos, ids, negative_drop=cfg.negative_drop, selection=cfg.prototype_selection,
                generator=generator, cache=selection_cache,
            )
            for level, (l, f) in enumerate(zip(info["level_losses"], info["kept_fraction"])):
                metrics[f"loss/prototype_l{level}"] = l
                metrics[f"kept_fraction/prototype_l{level}"] = f
            for view in local_q:
                proto = proto + pcsc_loss(
                    view, protos, ids, negative_drop=cfg.negative_drop, selection=cfg.prototype_selection,
                    generator=generator, cache=selection_cache,
                )[0]
            metrics["loss/prototype"] = proto.detach()
            loss = loss + proto
        metrics["loss/total"] = loss.detach()
        return loss, metrics

    def _instance_term(self, q, k, queue, protos, ids, local_q, generator, metrics, out_masks, cache) -> Tensor:
        cfg = self.cfg
        if not cfg.instance_selection:
            return sum((info_nce(v, k, queue, cfg.temperature) for v in (q, *local_q)), q.new_zeros(()))
        kw = {"temperature": cfg.temperature, "negative_drop": cfg.negative_drop, "level_reduction": cfg.instance_level_reduction}
        inst, info = icsc_loss(q, k, queue, protos, ids, generator=generator, cache=cache, **kw)
        if out_masks is not None:
            out_masks.extend(info["masks"])
        for level, (l, f) in enumerate(zip(info["level_losses"], info["kept_fraction"])):
            metrics[f"loss/instance_l{level}"] = l
            metrics[f"kept_fraction/instance_l{level}"] = f
        for view in local_q:
            if cfg.selection_on_local:
                inst = inst + icsc_loss(view, k, queue, protos, ids, masks=info["masks"], **kw)[0]
            else:
                inst = inst + info_nce(view, k, queue, cfg.temperature)
        return inst


class PCLObjective:
    """PCL v2 baseline: ``InfoNCE + ProtoNCE`` averaged over the clusterings (PCL Eq. 11)."""

    def __init__(self, temperature: float = 0.2, num_negatives: int | None = 16384) -> None:
        self.temperature = temperature
        self.num_negatives = num_negatives

    def __call__(self, q, k, queue, prototypes: Prototypes | None, ids, *, local_q=(), generator=None):
        if local_q:
            raise ValueError("PCL v2 is defined for two views; multi-crop local views are an HCSC option")
        inst = info_nce(q, k, queue, self.temperature)
        metrics = {"loss/instance": inst.detach()}
        loss = inst
        if prototypes is not None:
            proto, _ = proto_nce_loss(q, prototypes, ids, num_negatives=self.num_negatives, generator=generator)
            metrics["loss/prototype"] = proto.detach()
            loss = loss + proto
        metrics["loss/total"] = loss.detach()
        return loss, metrics
