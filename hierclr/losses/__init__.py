"""Contrastive losses, one family per file, as plain functions of tensors."""
from hierclr.losses.hcsc import icsc_loss, pcsc_loss
from hierclr.losses.infonce import info_nce
from hierclr.losses.objective import HCSCObjective, PCLObjective
from hierclr.losses.protonce import batch_negative_candidates, proto_nce_loss, prototype_logits
from hierclr.losses.selection import (
    apply_negative_mask,
    bernoulli_mask,
    instance_keep_prob,
    prototype_keep_prob,
)

__all__ = [
    "HCSCObjective",
    "PCLObjective",
    "apply_negative_mask",
    "batch_negative_candidates",
    "bernoulli_mask",
    "icsc_loss",
    "info_nce",
    "instance_keep_prob",
    "pcsc_loss",
    "proto_nce_loss",
    "prototype_keep_prob",
    "prototype_logits",
]
