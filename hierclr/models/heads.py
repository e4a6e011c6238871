"""Projection heads placed on top of a backbone's pooled features."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """Two-layer MLP projection head: ``Linear(in, hidden) - ReLU - Linear(hidden, out)``.

    This is the MoCo v2 head that HCSC's official code uses (``Linear(2048, 2048) - ReLU -
    Linear(2048, 128)`` on ResNet-50), without batch norm. Being an ``nn.Sequential``, its
    parameters are named ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``, as in the official
    ``fc`` head, which keeps checkpoint conversion a plain key rename.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        for field, value in (
            ("in_dim", in_dim),
            ("hidden_dim", hidden_dim),
            ("out_dim", out_dim),
        ):
            if value <= 0:
                raise ValueError(f"MLPHead {field} must be > 0, got {value}")
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
