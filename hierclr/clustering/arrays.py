"""Conversion of user arrays (numpy or torch, any device) to checked numpy arrays for faiss."""
from __future__ import annotations

import numpy as np
import torch


def as_numpy(x, dtype, name: str) -> np.ndarray:
    """``x`` as a C-contiguous numpy array of ``dtype``; NaN/inf in float input is an error."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        x = x.float() if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64) else x
        x = x.numpy()
    arr = np.ascontiguousarray(np.asarray(x), dtype=dtype)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=-1).sum()) if arr.ndim > 1 else int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} contain NaN or inf values ({bad} rows affected)")
    return arr
