"""MoCo v2: query encoder, momentum (key) encoder and a queue of negative keys.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR 2020) and
Chen et al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2, 2020). HCSC trains
this model unchanged and only replaces the loss; the loss (and any negative selection) lives in
``hierclr.losses``, not here.

The queue also stores each key's dataset id (``queue_ids``), so that the loss layer can look up the
cluster assignments of queued negatives; id ``-1`` marks a slot that holds no real key yet.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hierclr.models.backbones import build_backbone
from hierclr.models.heads import MLPHead


def _distributed() -> bool:
    """True when a torch.distributed process group is up."""
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order (no gradient flows back).

    Every rank must pass a tensor of the same shape. Without an initialised process group this
    returns ``t`` itself.
    """
    if not _distributed():
        return t
    t = t.contiguous()
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t)
    return torch.cat(gathered, dim=0)


class Encoder(nn.Module):
    """A backbone followed by a projection head; ``encoder(x) = head(backbone(x))``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class MoCo(nn.Module):
    """MoCo v2 model: query encoder, momentum encoder, and a queue of keys with their dataset ids.

    One training step, as the official code orders it::

        q, k = model(im_q, im_k)      # q with grad; encoder_k momentum-updated, then k computed
        loss = loss_fn(q, k, model.queue, model.queue_ids, ...)
        loss.backward(); optimizer.step()
        model.enqueue(k, ids)         # after the loss, so a key is never its own negative

    Args:
        backbone: torchvision ResNet name (see ``hierclr.models.backbones.BACKBONE_NAMES``).
        dim: output (embedding) dimension of the projection head, 128 in MoCo v2 / HCSC.
        hidden_dim: hidden width of the head; defaults to the backbone's feature dimension.
        queue_size: number of keys kept as negatives (16384 in HCSC).
        momentum: momentum ``m`` of the key encoder update (0.999 in HCSC).
        cifar_stem: 3x3 stride-1 stem without max-pool, for 32 px images.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        dim: int = 128,
        hidden_dim: int | None = None,
        queue_size: int = 16384,
        momentum: float = 0.999,
        cifar_stem: bool = False,
    ) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got {dim}")
        if queue_size <= 0:
            raise ValueError(f"queue_size must be > 0, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if hidden_dim is not None and hidden_dim <= 0:
            raise ValueError(
                f"hidden_dim must be > 0 (or None for the feature dim), got {hidden_dim}"
            )

        trunk, feature_dim = build_backbone(backbone, cifar_stem=cifar_stem)
        head = MLPHead(
            feature_dim, hidden_dim if hidden_dim is not None else feature_dim, dim
        )
        self.encoder_q = Encoder(trunk, head)
        # The key encoder starts as an exact copy and is only ever moved by momentum_update().
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param in self.encoder_k.parameters():
            param.requires_grad = False

        self.momentum = float(momentum)
        self.feature_dim = feature_dim

        # Random unit-norm keys stand in until the queue has been filled once.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer(
            "queue_ids", torch.full((queue_size,), -1, dtype=torch.long)
        )
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def queue_size(self) -> int:
        """Number of keys in the queue."""
        return self.queue.shape[0]

    @property
    def dim(self) -> int:
        """Embedding dimension (head output)."""
        return self.queue.shape[1]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``param_k = m * param_k + (1 - m) * param_q`` for every parameter.

        Buffers (BN running statistics) are not copied: the key encoder keeps its own, as in the
        official MoCo/HCSC code.
        """
        m = self.momentum
        for param_q, param_k in zip(
            self.encoder_q.parameters(), self.encoder_k.parameters()
        ):
            param_k.mul_(m).add_(param_q.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Write ``keys`` (B, dim) and their dataset ``ids`` (B,) into the queue at the pointer.

        Under torch.distributed, keys and ids of all ranks are gathered first (rank order), so every
        rank holds the same queue; all ranks must pass the same batch size. Writes wrap around the
        end of the queue, so the global batch need not divide ``queue_size``, but it must not exceed
        it. Keys are stored as given (the model's keys are already L2-normalised). Returns the queue
        slots written, in the order of the (gathered) keys.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(
                f"keys must have shape (B, {self.dim}), got {tuple(keys.shape)}"
            )
        if ids.shape != (keys.shape[0],):
            raise ValueError(
                f"ids must have shape ({keys.shape[0]},) to match keys, got {tuple(ids.shape)}"
            )
        keys = concat_all_gather(keys.detach())
        ids = concat_all_gather(ids.to(device=self.queue_ids.device, dtype=torch.long))
        batch = keys.shape[0]
        if batch > self.queue_size:
            raise ValueError(
                f"cannot enqueue {batch} keys (global batch) into a queue of size {self.queue_size}"
            )
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(batch, device=self.queue.device)) % self.queue_size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ids[slots] = ids
        self.queue_ptr[0] = (ptr + batch) % self.queue_size
        return slots

    def forward_query(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised query embeddings ``normalize(encoder_q(x))``, with gradient."""
        return F.normalize(self.encoder_q(x), dim=1)

    @torch.no_grad()
    def forward_key(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised key embeddings ``normalize(encoder_k(x))``, without gradient.

        With more than one rank, the batch is shuffled across ranks before the key encoder and
        unshuffled after it (shuffle-BN), so that BN statistics cannot leak which key matches which
        query; every rank must then pass the same batch size. A single process does not shuffle.

        This does not update the key encoder. The official code calls the momentum update just
        before computing the keys of every step; ``forward`` does exactly that, and a custom loop
        that calls this method directly must call ``momentum_update()`` itself.
        """
        if _distributed() and dist.get_world_size() > 1:
            x, idx_unshuffle = self._batch_shuffle(x)
            k = F.normalize(self.encoder_k(x), dim=1)
            return self._batch_unshuffle(k, idx_unshuffle)
        return F.normalize(self.encoder_k(x), dim=1)

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, local_views: list[torch.Tensor] | tuple = ()
    ) -> tuple[torch.Tensor, ...]:
        """Return ``(q, k)``: queries with gradient; keys from the freshly momentum-updated encoder.

        With multi-crop ``local_views``, return ``(q, k, [q_local, ...])``: the local queries are
        computed inside this forward so that, under DDP, their gradients are reduced with the global
        view's (a query computed outside the wrapper would bypass DDP's gradient hooks).
        """
        q = self.forward_query(im_q)
        local_q = [self.forward_query(v) for v in local_views]
        with torch.no_grad():
            self.momentum_update()
            k = self.forward_key(im_k)
        return (q, k, local_q) if local_views else (q, k)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Momentum encoder's L2-normalised head output, the features HCSC clusters in its E-step.

        Does not change train/eval mode: the caller puts the model in eval mode first.
        """
        return F.normalize(self.encoder_k(x), dim=1)

    @torch.no_grad()
    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Query encoder's avgpool features (not normalised), for kNN and linear evaluation.

        The query encoder is the one the MoCo/HCSC code exports for downstream evaluation (its
        ``encoder_q`` weights become the evaluated ResNet), so evaluation reads it, not encoder_k.
        """
        return self.encoder_q.backbone(x)

    # Shuffle-BN across ranks (MoCo section 3.3). Requires an equal batch on every rank.

    @torch.no_grad()
    def _batch_shuffle(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Give this rank a random slice of the global batch; return it and the inverse permutation."""
        self._check_equal_batch(x)
        x_all = concat_all_gather(x)
        world, rank = dist.get_world_size(), dist.get_rank()
        idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(idx_shuffle, src=0)  # every rank uses rank 0's permutation
        idx_unshuffle = torch.argsort(idx_shuffle)
        return x_all[idx_shuffle.view(world, -1)[rank]], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle(
        self, x: torch.Tensor, idx_unshuffle: torch.Tensor
    ) -> torch.Tensor:
        """Undo ``_batch_shuffle``: return the rows of this rank's original samples, in order."""
        x_all = concat_all_gather(x)
        world, rank = dist.get_world_size(), dist.get_rank()
        return x_all[idx_unshuffle.view(world, -1)[rank]]

    @staticmethod
    def _check_equal_batch(x: torch.Tensor) -> None:
        """Raise on every rank if the ranks' batch sizes differ (all_gather would fail or hang)."""
        batch = x.shape[0]
        sizes = concat_all_gather(torch.tensor([batch], device=x.device))
        if not bool((sizes == batch).all()):
            raise ValueError(
                f"shuffle-BN needs the same batch size on every rank, got {sizes.tolist()}"
            )
