"""Bad-image accounting: skip, count and report undecodable images; abort past a budget.

A corrupt file among a million must not stop a week-long run, but a broken copy of the dataset
must not train silently on half of it. The budget is a fraction of the dataset's rows; each bad id
counts once however many epochs meet it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class BadImage:
    id: int
    shard: str
    reason: str


class TooManyBadImagesError(RuntimeError):
    """More images failed to decode than ``max_bad_fraction`` of the dataset allows."""


class BadImageBudget:
    """Plain-Python ledger: :meth:`record` returns the total so far and raises past the budget."""

    def __init__(self, num_rows: int, max_bad_fraction: float = 0.001, name: str = "dataset"):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.num_rows = num_rows
        self.max_bad_fraction = max_bad_fraction
        self.limit = math.floor(max_bad_fraction * num_rows)
        self.name = name
        self._bad: dict[int, BadImage] = {}

    def record(self, bad: list[BadImage]) -> int:
        for b in bad:
            self._bad.setdefault(b.id, b)
        if len(self._bad) > self.limit:
            shown = "; ".join(f"id {b.id} in {b.shard}: {b.reason}" for b in list(self._bad.values())[:5])
            raise TooManyBadImagesError(
                f"{len(self._bad)} undecodable images in {self.name} exceed max_bad_fraction="
                f"{self.max_bad_fraction} of {self.num_rows} rows (limit {self.limit}); by shard: "
                f"{self.by_shard()}; first: {shown}")
        return len(self._bad)

    def by_shard(self, shown: int = 5) -> str:
        """``<shard> (<n> images), ...``, most first: a damaged shard (e.g. a same-size corrupt copy, where every
        image fails) stands out by name."""
        counts = Counter(b.shard for b in self._bad.values()).most_common()
        text = ", ".join(f"{shard} ({n} image{'s' if n > 1 else ''})" for shard, n in counts[:shown])
        return text + (f" and {len(counts) - shown} more shards" if len(counts) > shown else "")

    def report(self) -> list[BadImage]:
        return sorted(self._bad.values(), key=lambda b: b.id)

    def __len__(self) -> int:
        return len(self._bad)
