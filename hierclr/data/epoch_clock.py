"""The epoch clock actor's class, in a module of its own that imports nothing heavy.

Ray runs every actor in a fresh process that imports the actor class's module; kept apart from
:mod:`hierclr.data.streams` (torch, torchvision), the clock's process starts in a fraction of a second.
"""
from __future__ import annotations


class EpochClock:
    """The current training epoch, set by the trainer before each pass and read by the stream's tasks.

    Ray Data counts executions per dataset copy, and a Ray Train worker-group restart re-splits the
    dataset, so that count restarts at 0; the clock keeps per-row seeds keyed by the true epoch."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = int(epoch)

    def set(self, epoch: int) -> int:
        self.epoch = int(epoch)
        return self.epoch

    def get(self) -> int:
        return self.epoch
