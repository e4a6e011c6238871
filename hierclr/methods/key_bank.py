"""The E-step's features from the training pass (``clustering.features: train_keys``): a bank of the latest
momentum-encoder key of every dataset id, filled by the training step, so no extra forward pass is needed.

Each rank owns the ids ``id % world == rank`` and keeps their latest key. Every rank already receives every
rank's keys and ids at each step (MoCo's all-gathered enqueue), so a rank records the keys of the ids it owns
from there: no extra communication, and each id has exactly one owner, whichever worker trained on it (an id
trained on by two workers in different epochs is held once, with the key of the later step). At the epoch
boundary each rank submits its owned ids that have a key as its E-step shard: a partition of the ids.

* An id that no worker trained on in the last epoch (a ``drop_last`` remainder) keeps its key from the last
  epoch that trained on it (its ``age`` in epochs is reported).
* An id no step has trained on since the bank started (the first epochs, or every id after a resume: the
  bank is not in the checkpoint) has no key: the first E-step of every training process runs the embed pass
  instead (as ``embed_pass`` does) and fills the bank's missing ids from it, so later E-steps cluster the
  bank alone.
"""
from __future__ import annotations

import torch
from torch import Tensor


class KeyBank:
    """Latest key per owned id (``id % world == rank``) of ``num_rows`` dataset ids, on ``device``."""

    def __init__(self, num_rows: int, dim: int, rank: int = 0, world: int = 1, device=None) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"KeyBank: rank must be in [0, world), got rank={rank}, world={world}")
        if num_rows < 1 or dim < 1:
            raise ValueError(f"KeyBank: num_rows and dim must be >= 1, got {num_rows}, {dim}")
        self.num_rows, self.rank, self.world = num_rows, rank, world
        self.num_owned = len(range(rank, num_rows, world))
        # one scratch row at the end takes the writes of ids owned by other ranks (no host sync per step)
        self.keys = torch.zeros(self.num_owned + 1, dim, device=device)
        self.stamp = torch.full((self.num_owned + 1,), -1, dtype=torch.long, device=device)  # epoch of the key
        self.epoch = 0  # the epoch being trained: the stamp of what record() writes

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def owned_ids(self) -> Tensor:
        return torch.arange(self.rank, self.num_rows, self.world, device=self.keys.device)

    def _slots(self, ids: Tensor) -> Tensor:
        ids = ids.to(self.keys.device, torch.long)
        return torch.where(ids % self.world == self.rank, ids // self.world, self.num_owned)

    @torch.no_grad()
    def record(self, ids: Tensor, keys: Tensor) -> None:
        """Keys of one step (every rank's, as enqueued; ids unique within it; no host sync): keep those of
        owned ids, stamped with the current epoch."""
        slots = self._slots(ids)
        self.keys.index_copy_(0, slots, keys.detach().to(self.keys.dtype))
        self.stamp.index_fill_(0, slots, self.epoch)

    @torch.no_grad()
    def fill_missing(self, ids: Tensor, features: Tensor) -> int:
        """Features of an embed pass (any rows, e.g. every rank's): set the owned ids that have no key yet,
        stamped with the current epoch. Returns how many were set."""
        ids = torch.as_tensor(ids)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_rows):
            raise ValueError(f"KeyBank: ids must be in [0, {self.num_rows}), got [{int(ids.min())}, {int(ids.max())}]")
        if features.shape != (ids.numel(), self.keys.shape[1]):
            raise ValueError(f"KeyBank: features must be ({ids.numel()}, {self.keys.shape[1]}), got {tuple(features.shape)}")
        slots = self._slots(ids)
        take = (slots < self.num_owned) & (self.stamp[slots] < 0)
        slots = slots[take]
        self.keys[slots] = features.to(self.keys.device, self.keys.dtype)[take]
        self.stamp[slots] = self.epoch
        return int(slots.numel())

    @property
    def num_missing(self) -> int:
        """Owned ids with no key."""
        return int((self.stamp[: self.num_owned] < 0).sum())

    def shard(self) -> tuple[Tensor, Tensor]:
        """``(ids, keys)`` of the owned ids that have a key, on the CPU: this rank's E-step shard."""
        have = self.stamp[: self.num_owned] >= 0
        return self.owned_ids()[have].cpu(), self.keys[: self.num_owned][have].float().cpu()

    def ages(self, epoch: int) -> Tensor:
        """``epoch - `` the epoch of each owned key (keys present only), on the CPU."""
        stamp = self.stamp[: self.num_owned]
        return (epoch - stamp[stamp >= 0]).cpu()
