"""Encoded image bytes -> uint8 RGB tensors, and cheap header probes for statistics.

torchvision's decoder (libjpeg-turbo / libpng) is the fast path; PIL decodes what it cannot
(CMYK JPEGs, palette PNGs, WebP/GIF builds without torchvision support). A file neither can decode
raises :class:`CorruptImageError` with the reason, which the streams count as a bad image.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as _tv_decode


class CorruptImageError(ValueError):
    """The bytes are not a decodable image (the message says why)."""


def decode_rgb(data: bytes | np.ndarray | memoryview) -> torch.Tensor:
    """Decode to a ``(3, H, W)`` uint8 tensor (grey and RGBA images become RGB)."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size == 0:
        raise CorruptImageError("empty image bytes")
    try:
        return _tv_decode(torch.from_numpy(buf.copy()), mode=ImageReadMode.RGB)
    except RuntimeError:
        pass  # fall through to PIL, which reads more variants
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001  PIL raises many types for bad data; all mean "not decodable"
        raise CorruptImageError(f"{type(e).__name__}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def probe(data: bytes) -> tuple[str, int, int]:
    """``(format, height, width)`` from the header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return str(im.format), int(im.height), int(im.width)
    except Exception as e:  # noqa: BLE001  (as above)
        raise CorruptImageError(f"{type(e).__name__}: {e}") from None
