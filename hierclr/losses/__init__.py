"""Contrastive losses, one family per file, as plain functions of tensors."""
from hierclr.losses.clce import clce_loss, hard_negative_weights, lacln_loss
from hierclr.losses.hcal import adaptive_weights, aggregate_features, hcal_level_losses, hcal_loss
from hierclr.losses.hcsc import icsc_loss, pcsc_loss
from hierclr.losses.infonce import info_nce
from hierclr.losses.objective import HCSCObjective, PCLObjective
from hierclr.losses.protonce import batch_negative_candidates, proto_nce_loss, prototype_logits
from hierclr.losses.selection import (
    SelectionCache,
    apply_negative_mask,
    bernoulli_mask,
    instance_keep_prob,
    prototype_keep_prob,
    prototype_log_softmax,
    queue_log_normaliser,
)
from hierclr.losses.supcon import supcon_loss
from hierclr.losses.varcon import varcon_loss

__all__ = [
    "HCSCObjective",
    "PCLObjective",
    "SelectionCache",
    "adaptive_weights",
    "aggregate_features",
    "apply_negative_mask",
    "batch_negative_candidates",
    "bernoulli_mask",
    "clce_loss",
    "hard_negative_weights",
    "hcal_level_losses",
    "hcal_loss",
    "icsc_loss",
    "info_nce",
    "instance_keep_prob",
    "lacln_loss",
    "pcsc_loss",
    "proto_nce_loss",
    "prototype_keep_prob",
    "prototype_log_softmax",
    "prototype_logits",
    "queue_log_normaliser",
    "supcon_loss",
    "varcon_loss",
]
