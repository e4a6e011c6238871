"""One optimisation step of the supervised modes, and their evaluation readout (no Ray: testable alone).

Every augmented view is a training sample: a batch of B images with V views gives V*B rows, ``labels``
repeated per view, so the contrastive losses see the other views of an image as positives (SupCon's
multi-view batch). Under DDP the contrastive losses read the global batch: every rank all-gathers the
embeddings (others' detached, its own with gradient), as the official VarCon code does. ``loss.ddp_scale``:
``official`` (default) leaves each rank's loss unscaled, as that code does, so DDP's gradient average is
1/world of the global loss's gradient; ``world_size`` multiplies it by the world size, so the average is the
global loss's exact gradient (the SimCLR recipe; at the same lr a step is world x the official one).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hierclr.config.supervised import SupervisedConfig
from hierclr.losses.clce import lacln_loss
from hierclr.losses.hcal import hcal_loss
from hierclr.losses.supcon import supcon_loss
from hierclr.losses.varcon import varcon_loss


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """All ranks' rows, this rank's keeping their gradient (rank order, so every rank builds the same batch)."""
    world = _world()
    if world == 1:
        return z, labels
    zs = [torch.empty_like(z) for _ in range(world)]
    ys = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(zs, z.detach().contiguous())
    dist.all_gather(ys, labels.contiguous())
    zs[dist.get_rank()] = z
    return torch.cat(zs), torch.cat(ys)


def _core(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def finetune_loss(model: nn.Module, cfg: SupervisedConfig, x: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
    """``x`` (N, 3, H, W) all views, ``labels`` (N,) fine labels -> (loss to backpropagate, metrics)."""
    lc = cfg.loss
    out = model(x, probe_only=lc.name in ("supcon", "varcon"))
    scale = ddp_loss_scale(cfg)
    ce = F.cross_entropy(out.logits.float(), labels, label_smoothing=lc.label_smoothing)
    metrics = {"loss/ce": ce.detach(), "train/acc": (out.logits.argmax(1) == labels).float().mean()}
    if lc.name == "ce":
        loss = ce
    else:
        emb = F.normalize(out.features, dim=1) if lc.name == "clce" and lc.clce_features == "encoder" else out.z
        z, y = gather_with_grad(emb, labels)
        if lc.name == "supcon":
            con, parts = supcon_loss(z, y, temperature=lc.contrastive_temperature(), return_parts=True)
            loss = con * scale + ce  # ce: the online probe (detached trunk features)
            metrics["loss/supcon"] = con.detach()
        elif lc.name == "varcon":
            con, parts = varcon_loss(z, y, tau1=lc.tau1, epsilon=lc.epsilon, return_parts=True)
            loss = con * scale + ce
            metrics["loss/varcon"] = con.detach()
        else:  # clce (Eq. 1, as clce_loss): (1 - lam) CE + lam LACLN, CE on this rank's rows, LACLN global;
            # LACLN on the L2-normalised encoder output (paper Sec. 3.3) or the projection (clce_features)
            lacln, parts = lacln_loss(z, y, temperature=lc.contrastive_temperature(), form=lc.form,
                                      return_parts=True)
            loss = (1 - lc.lam) * ce + lc.lam * lacln * scale
            metrics["loss/lacln"] = lacln.detach()
        metrics.update({f"loss/{k}" if k in ("kl", "nll") else f"train/{k}": v.detach().float()
                        for k, v in parts.items() if k not in ("ce", "lacln")})
    metrics["loss/total"] = loss.detach() / (scale if lc.name != "ce" else 1)
    return loss, metrics


def ddp_loss_scale(cfg: SupervisedConfig) -> int:
    """The factor on each rank's contrastive loss of the all-gathered batch (``loss.ddp_scale``; module docstring)."""
    return _world() if cfg.loss.ddp_scale == "world_size" else 1


def hcal_step_loss(model: nn.Module, cfg: SupervisedConfig, x: Tensor, labels: Tensor,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """``labels`` (N, L) at every level -> HCAL loss (per-level InfoNCE, adaptive weights) on this rank's rows.

    Aggregation forms parent features from the child classes present in the rank's batch (not the global
    batch): the per-level losses are means over the rank's rows, and DDP averages them."""
    h = cfg.hcal
    core = _core(model)
    feats = model(x)
    protos = [core.head.level_prototypes(level, generator=generator) for level in range(core.head.num_levels)]
    loss, parts = hcal_loss(feats, labels, protos, temperature=h.temperature, gamma=h.gamma, aggregate=h.aggregate,
                            adaptive=h.adaptive, return_parts=True)
    metrics = {"loss/total": loss.detach()}
    for k, v in parts.items():
        metrics[f"loss/{k}" if k.startswith("level") else k] = v.detach().float()
    with torch.no_grad():
        pred0 = (feats.detach() @ protos[0].detach().T).argmax(1)
        metrics["train/acc"] = (pred0 == labels[:, 0]).float().mean()
    return loss, metrics


@torch.no_grad()
def predict(model: nn.Module, cfg: SupervisedConfig, x: Tensor, level_map: Tensor,
            parents: list[Tensor] | None) -> dict[str, Tensor]:
    """Eval-mode readout: ``levels`` (B, L) the predicted class at every level; finetune also ``top5`` (B, k).

    finetune predicts the fine class and reads its ancestors from the hierarchy (consistent by construction);
    HCAL predicts every level from its prototypes (``hcal.readout``)."""
    core = _core(model)
    if cfg.task == "hcal":
        feats = core(x)
        return {"levels": core.head.predict(feats, readout=cfg.hcal.readout, parents=parents)}
    logits = core(x).logits
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"levels": level_map[top[:, 0]], "top5": top}
