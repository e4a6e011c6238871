"""VarCon (Wang et al. 2025): supervised contrastive learning as variational inference over classes.

The loss is the negative posterior-weighted ELBO, ``KL(q_phi(r'|z) || p_theta(r'|z)) - log p_theta(r|z)``,
computed as the authors' code (ziwenwang28/VarContrast, ``VarConLoss``) computes it, in the spec's
five steps (the project spec ``specs/supervised.md``; the paper's Eq. 7-13 as the authors' code cites them):

1. Classes = the labels present in the batch. Centroid ``w_r`` = mean of the batch embeddings with
   label r, L2-normalised, **detached** (no gradient reaches the centroids).
2. ``logits = z @ W^T / tau1``, ``p = softmax(logits)`` over the present classes (Eq. 8).
3. ``conf_i = p_i[y_i]``; ``tau2_i = max((tau1 - eps) + 2 eps conf_i, 1e-6)`` (Eq. 13), **not**
   detached: the gradient flows through the confidence into the target.
4. ``q_i`` puts weight ``exp(1 / tau2_i)`` on the true class and 1 on every other present class,
   normalised (Eq. 10-12).
5. ``loss = KL(q || p)`` summed over classes and averaged over rows (``batchmean``) ``+ mean_i -log p_i[y_i]``.

Cost is linear in N: centroids come from ``index_add_`` and every tensor is at most N x classes;
there is no N x N similarity matrix.

Choices beyond the authors' code (values equal, numerics differ):
  * ``q`` is built in log space (``log_softmax`` of ``1 / tau2`` on the true class, 0 elsewhere) instead
    of dividing ``exp(1 / tau2)``; at ``tau2 = 0.08`` that is ``exp(12.5)``, out of fp16's range.
  * The computation runs in fp32 (fp16/bf16 ``z`` is upcast, autocast disabled), like the
    contrastive losses of this package; the authors run it under autocast.
  * A class whose mean embedding is the zero vector gets a zero centroid (``F.normalize``), as in the
    authors' code; this never makes NaN.
  * A batch of one class gives ``p = q = 1``: loss 0 with a zero gradient (not an error).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hierclr.losses.label_pairs import check_embeddings_and_labels, full_precision, no_autocast

TAU2_MIN = 1e-6  # clamp of the adaptive temperature (authors' code)


def batch_class_centroids(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(centroids, class_index)``: the L2-normalised, detached mean of ``z`` per present label
    (sorted by label value) and each row's index into them. O(N d)."""
    classes, class_index = torch.unique(labels, return_inverse=True)
    z = z.detach()
    sums = torch.zeros(classes.shape[0], z.shape[1], dtype=z.dtype, device=z.device)
    sums.index_add_(0, class_index, z)
    counts = torch.bincount(class_index, minlength=classes.shape[0]).to(z.dtype)
    return F.normalize(sums / counts[:, None], dim=1), class_index


def varcon_loss(
    z: Tensor,
    labels: Tensor,
    *,
    tau1: float = 0.1,
    epsilon: float = 0.02,
    return_parts: bool = False,
):
    """VarCon loss of the batch (module docstring for the steps and the choices).

    Args:
        z: ``(N, d)`` L2-normalised embeddings of all views of the (gathered) batch.
        labels: ``(N,)`` integer class ids (any values; only the present ones form classes).
        tau1: temperature of ``p_theta``.
        epsilon: half-width of the range ``[tau1 - eps, tau1 + eps]`` of the adaptive ``tau2``.
        return_parts: also return detached ``{"kl", "nll", "tau2_mean", "num_classes"}``.
    Returns:
        The scalar loss, or ``(loss, parts)`` with ``return_parts=True``.
    """
    check_embeddings_and_labels(z, labels, "varcon_loss")
    if tau1 <= 0:
        raise ValueError(f"varcon_loss: tau1 must be > 0, got {tau1}")
    if epsilon < 0:
        raise ValueError(f"varcon_loss: epsilon must be >= 0, got {epsilon}")
    with no_autocast(z):
        z32 = full_precision(z)
        centroids, y = batch_class_centroids(z32, labels)
        log_p = F.log_softmax(z32 @ centroids.T / tau1, dim=1)
        log_p_true = log_p.gather(1, y[:, None]).squeeze(1)
        tau2 = ((tau1 - epsilon) + 2.0 * epsilon * log_p_true.exp()).clamp_min(TAU2_MIN)
        q_logits = torch.zeros_like(log_p).scatter(1, y[:, None], (1.0 / tau2)[:, None])
        log_q = F.log_softmax(q_logits, dim=1)
        kl = (log_q.exp() * (log_q - log_p)).sum() / z.shape[0]
        nll = -log_p_true.mean()
        loss = kl + nll
    if not return_parts:
        return loss
    parts = {
        "kl": kl.detach(),
        "nll": nll.detach(),
        "tau2_mean": tau2.mean().detach(),
        "num_classes": torch.tensor(centroids.shape[0], device=z.device),
    }
    return loss, parts
