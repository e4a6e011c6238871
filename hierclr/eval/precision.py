"""The precision evaluation features are computed and shipped in: fp32 by default, as the papers' code runs.

``bf16`` / ``fp16`` autocast the frozen encoder on a GPU (faster, and the features come out in that
precision); on the CPU the features stay fp32 whatever the setting.
"""
from __future__ import annotations

from typing import Literal

import torch

FeaturePrecision = Literal["fp32", "bf16", "fp16"]

_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def feature_dtype(precision: FeaturePrecision) -> torch.dtype:
    """The dtype features are kept and shipped in."""
    if precision not in _DTYPES:
        raise ValueError(f"feature precision must be one of {list(_DTYPES)}, got {precision!r}")
    return _DTYPES[precision]


def autocast_dtype(precision: FeaturePrecision, device_type: str) -> torch.dtype | None:
    """The autocast dtype for the encoder's forward pass, or ``None``: no autocast (fp32, or not on CUDA)."""
    dtype = feature_dtype(precision)
    return dtype if dtype != torch.float32 and device_type == "cuda" else None
