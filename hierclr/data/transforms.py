"""Image augmentation for self-supervised pretraining (MoCo v2 / HCSC multi-crop), split into stages.

The stages let the same code run in CPU data tasks and on a GPU worker:

1. per image, CPU, uint8: geometric crops (:meth:`MultiViewAugment.crop`, :func:`random_resized_crop`);
2. batched, any device: photometric ops with **per-sample** random parameters on a stacked uint8 batch
   (:meth:`MultiViewAugment.photometric`, :func:`apply_photometric`) -> float32 in [0, 1];
3. :meth:`MultiViewAugment.normalize` (mean/std) on the device, and :meth:`MultiViewAugment.to_uint8` to ship
   CPU-augmented views cheaply.

Why batched ops of our own: torchvision v2 transforms applied to a batch draw one set of random parameters for
the whole batch, which would give every image the same jitter/blur/flip - wrong for contrastive views. The batched
ops here equal torchvision's per-image functional ops on float images (to float rounding), with one factor per sample.

Value conventions: uint8 images are (3, H, W) / (B, 3, H, W) in [0, 255]; float images are float32 in [0, 1]
(``x / 255``); normalised tensors are ``(x - mean) / std``. Images with 1 channel (grayscale) are repeated to 3,
2 channels (grayscale + alpha) use the first, 4 channels (RGBA) drop alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as nnf
from pydantic import AfterValidator, Field, ValidationInfo, field_validator
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from hierclr.config.loader import Section

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


# --------------------------------------------------------------------------------------------------- config


def _positive_std(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if min(v) <= 0:
        raise ValueError(f"std must be > 0, got {v}")
    return v


Std = Annotated[tuple[float, float, float], AfterValidator(_positive_std)]


def _check_scale(v: tuple[float, float]) -> tuple[float, float]:
    lo, hi = v
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {v}")
    return v


def _check_positive_range(v: tuple[float, float], what: str) -> tuple[float, float]:
    lo, hi = v
    if not 0.0 < lo <= hi:
        raise ValueError(f"{what} must satisfy 0 < lo <= hi, got {v}")
    return v


class CropSpec(Section):
    """One extra (local) multi-crop view: output side ``size`` and area fraction range ``scale``."""

    size: int = Field(ge=1)
    scale: tuple[float, float]

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_scale(v)


class AugmentConfig(Section):
    """Training augmentation; defaults are the MoCo v2 ImageNet recipe (HCSC uses the same for global views)."""

    size: int = Field(224, ge=1, description="side of the two global crops")
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = Field(
        (0.4, 0.4, 0.4, 0.1), description="ColorJitter brightness, contrast, saturation, hue"
    )
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.5, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = Field(None, ge=1, description="odd; None: ~10% of each view's side")
    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    global_views: int = Field(2, ge=1, le=2, description="global crops per image: 2 for contrastive training, "
                                                        "1 for the linear / semi-supervised protocols")
    local_crops: tuple[CropSpec, ...] = Field((), description="HCSC multi-crop local views")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: Std = IMAGENET_STD

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_scale(v)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_positive_range(v, "ratio")

    @field_validator("blur_sigma")
    @classmethod
    def _sigma(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_positive_range(v, "blur_sigma")

    @field_validator("jitter")
    @classmethod
    def _jitter(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if min(v) < 0:
            raise ValueError(f"jitter strengths must be >= 0, got {v}")
        if v[3] > 0.5:
            raise ValueError(f"hue jitter must be <= 0.5, got {v[3]}")
        return v

    @field_validator("blur_kernel")
    @classmethod
    def _kernel(cls, v: int | None) -> int | None:
        if v is not None and v % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {v}")
        return v

    def blur_kernel_for(self, size: int) -> int:
        """Blur kernel side for a view of side ``size``: ``blur_kernel`` or the odd size nearest 10% (23 for 224)."""
        if self.blur_kernel is not None:
            return self.blur_kernel
        return int(0.1 * size) // 2 * 2 + 1


class EvalTransformConfig(Section):
    """Evaluation transform: resize the shorter side to ``resize``, then center-crop ``crop``."""

    resize: int = Field(256, ge=1)
    crop: int = Field(224, ge=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: Std = IMAGENET_STD

    @field_validator("crop")
    @classmethod
    def _crop(cls, v: int, info: ValidationInfo) -> int:
        resize = info.data.get("resize")
        if resize is not None and v > resize:
            raise ValueError(f"crop ({v}) must be <= resize ({resize})")
        return v


_MULTICROP = (
    CropSpec(size=192, scale=(0.172, 0.86)),
    CropSpec(size=160, scale=(0.143, 0.715)),
    CropSpec(size=128, scale=(0.114, 0.571)),
    CropSpec(size=96, scale=(0.086, 0.429)),
)


class TransformConfig(Section):
    """Train augmentation plus eval transform."""

    train: AugmentConfig = AugmentConfig()
    eval: EvalTransformConfig = EvalTransformConfig()

    @classmethod
    def preset(cls, name: Literal["imagenet", "imagenet_multicrop", "cifar", "imagenet_linear", "cifar_linear"]
               ) -> TransformConfig:
        """``imagenet``: MoCo v2. ``imagenet_multicrop``: + HCSC's 4 local crops. ``cifar``: 32 px, no blur.
        ``*_linear``: the linear / semi-supervised evaluation protocol (spec "Evaluation protocols"): one
        RandomResizedCrop (scale 0.08-1, torchvision's default) + horizontal flip, no colour operations."""
        plain = {"global_views": 1, "scale": (0.08, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
        if name == "imagenet":
            return cls()
        if name == "imagenet_multicrop":
            return cls(train=AugmentConfig(local_crops=_MULTICROP))
        if name == "imagenet_linear":
            return cls(train=AugmentConfig(**plain))
        if name in ("cifar", "cifar_linear"):
            train = {"size": 32, "scale": (0.2, 1.0), "blur_p": 0.0, **(plain if name == "cifar_linear" else {})}
            return cls(
                train=AugmentConfig(**train, mean=CIFAR_MEAN, std=CIFAR_STD),
                eval=EvalTransformConfig(resize=32, crop=32, mean=CIFAR_MEAN, std=CIFAR_STD),
            )
        raise ValueError(f"unknown transform preset {name!r}")


# --------------------------------------------------------------------------------------------------- geometry


def to_rgb(img: Tensor) -> Tensor:
    """(C, H, W) or (H, W) image -> 3 channels: gray repeated, gray+alpha keeps gray, RGBA drops alpha."""
    if img.ndim == 2:
        img = img.unsqueeze(0)
    if img.ndim != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(img.shape)}")
    c = img.shape[0]
    if c == 3:
        return img
    if c in (1, 2):
        return img[:1].expand(3, -1, -1).contiguous()
    if c == 4:
        return img[:3]
    raise ValueError(f"expected 1, 2, 3 or 4 channels, got {c}")


def sample_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box: torchvision's algorithm with a numpy generator."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # fallback: central crop with the aspect ratio clamped to `ratio` (torchvision)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Tensor:
    """Random area/aspect crop of a (C, H, W) image resized (antialiased) to (3, size, size), dtype kept."""
    img = to_rgb(img)
    top, left, h, w = sample_crop_box(img.shape[-2], img.shape[-1], scale, ratio, rng)
    return tvf.resized_crop(img, top, left, h, w, [size, size], antialias=True)


def eval_transform(img: Tensor, cfg: EvalTransformConfig) -> Tensor:
    """Resize shorter side to ``cfg.resize`` (antialias), center-crop ``cfg.crop``; no-op on an already-final image.

    Same as ``v2.Compose([v2.Resize(resize), v2.CenterCrop(crop)])``; channels are coerced to 3 (see ``to_rgb``).
    """
    img = to_rgb(img)
    if cfg.resize == cfg.crop and img.shape[-2] == img.shape[-1] == cfg.crop:
        return img
    img = tvf.resize(img, [cfg.resize], antialias=True)
    return tvf.center_crop(img, [cfg.crop, cfg.crop])


# --------------------------------------------------------------------------------------------------- batched ops


def _per_sample(f: Tensor | float, x: Tensor) -> Tensor:
    """A (B,) factor as a (B, 1, 1, 1) tensor on x's device and dtype."""
    f = torch.as_tensor(f, dtype=x.dtype, device=x.device)
    return f.reshape(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, torchvision's weights and operation order."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(_GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    """``f * x + (1 - f) * other`` clamped to [0, 1] (torchvision's _blend for float images)."""
    return (x * f + other * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Per-sample ``clamp(x * factor)``; x float (B, 3, H, W) in [0, 1], factor (B,) >= 0."""
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Per-sample blend with the mean of each image's grayscale version."""
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Per-sample blend with each image's grayscale version (0: gray, 1: unchanged)."""
    return _blend(x, _gray(x), _per_sample(factor, x))


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, 3, H, W) RGB -> h in [0, 1), s, v (each (B, H, W)); hue/saturation are 0 for gray pixels."""
    r, g, b = x.unbind(dim=-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    eqc = maxc == minc
    rng = maxc - minc
    ones = torch.ones_like(maxc)
    s = rng / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, rng)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(eqc, torch.zeros_like(h), h)
    h = (h / 6.0 + 1.0).fmod(1.0)
    return h, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """h in [0, 1), s, v (B, H, W) -> (B, 3, H, W) RGB (sector formula, as torchvision)."""
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64).remainder(6)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s + s * f)).clamp(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)  # (B, 4, H, W)
    # channel -> index into (v, p, q, t) for each of the six hue sectors
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=h.device)
    idx = select[:, i].movedim(0, -3)  # (B, 3, H, W)
    return vpqt.gather(-3, idx)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Per-sample hue shift by ``factor`` in [-0.5, 0.5] (fraction of the hue circle), via HSV."""
    h, s, v = _rgb_to_hsv(x)
    h = (h + torch.as_tensor(factor, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(h, s, v)


def to_grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> 3-channel grayscale (weights 0.2989, 0.587, 0.114)."""
    return _gray(x).expand_as(x).contiguous()


def gaussian_kernels(sigma: Tensor, kernel_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B,) sigmas -> (B, K) normalised 1-D kernels, torchvision's formula (softmax of -(x/sigma)^2)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    pos = torch.linspace(-lim, lim, steps=kernel_size, dtype=dtype, device=sigma.device)
    return torch.softmax(-(pos / sigma.to(dtype).reshape(-1, 1)).pow(2), dim=-1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample Gaussian blur: separable grouped conv, reflect padding (needs kernel_size // 2 < H, W)."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    b, c, hgt, wid = x.shape
    if b == 0:
        return x.clone()
    k = gaussian_kernels(sigma.to(x.device), kernel_size, x.dtype)  # (B, K)
    k = k.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per (sample, channel) group
    pad = kernel_size // 2
    y = nnf.pad(x.reshape(1, b * c, hgt, wid), [pad, pad, pad, pad], mode="reflect")
    y = nnf.conv2d(y, k.reshape(b * c, 1, 1, kernel_size), groups=b * c)
    y = nnf.conv2d(y, k.reshape(b * c, 1, kernel_size, 1), groups=b * c)
    return y.reshape(b, c, hgt, wid)


def hflip(x: Tensor, mask: Tensor) -> Tensor:
    """Flip left-right the samples where ``mask`` (B,) is true."""
    return torch.where(mask.to(x.device).reshape(-1, 1, 1, 1), x.flip(-1), x)


# --------------------------------------------------------------------------------------------------- photometric


@dataclass
class PhotometricParams:
    """Per-sample random parameters of the photometric stage (all tensors have leading dim B).

    ``order[i]`` is a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue): the order the jitter ops run
    in for sample i, like torchvision's ColorJitter.
    """

    jitter: Tensor  # bool
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor  # int64 (B, 4)
    gray: Tensor  # bool
    blur: Tensor  # bool
    sigma: Tensor
    flip: Tensor  # bool

    def to(self, device: torch.device | str) -> PhotometricParams:
        return PhotometricParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.jitter.shape[0])


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def sample_photometric_params(
    n: int, cfg: AugmentConfig, generator: torch.Generator, device: torch.device | str = "cpu"
) -> PhotometricParams:
    """Draw parameters for n samples on CPU with ``generator`` (a CPU generator), then move them to ``device``.

    Drawing on CPU makes a seed give identical parameters whatever the device. Factor ranges are ColorJitter's:
    brightness/contrast/saturation uniform in [max(0, 1 - s), 1 + s], hue uniform in [-h, h].
    """
    b, c, s, h = cfg.jitter
    params = PhotometricParams(
        jitter=torch.rand(n, generator=generator) < cfg.jitter_p,
        brightness=_uniform(n, max(0.0, 1.0 - b), 1.0 + b, generator),
        contrast=_uniform(n, max(0.0, 1.0 - c), 1.0 + c, generator),
        saturation=_uniform(n, max(0.0, 1.0 - s), 1.0 + s, generator),
        hue=_uniform(n, -h, h, generator),
        order=torch.rand(n, 4, generator=generator).argsort(dim=1),
        gray=torch.rand(n, generator=generator) < cfg.grayscale_p,
        blur=torch.rand(n, generator=generator) < cfg.blur_p,
        sigma=_uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], generator),
        flip=torch.rand(n, generator=generator) < cfg.flip_p,
    )
    return params.to(device)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _to_float(x: Tensor) -> Tensor:
    """uint8 -> float32 / 255; float -> float32 copy (never aliases the input)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got {x.dtype}")
    return x.to(torch.float32, copy=True)


def apply_photometric(x: Tensor, params: PhotometricParams, cfg: AugmentConfig) -> Tensor:
    """Colour jitter (each sample's own op order) -> grayscale -> blur -> flip, each only where its mask is set.

    x: (B, 3, H, W) uint8, or float in [0, 1]. Returns float32 in [0, 1]. The blur kernel is
    ``cfg.blur_kernel_for(W)``. Jitter ops whose strength in ``cfg.jitter`` is 0 are skipped, like ColorJitter.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W), got {tuple(x.shape)}")
    if len(params) != x.shape[0]:
        raise ValueError(f"params for {len(params)} samples, batch has {x.shape[0]}")
    out = _to_float(x)
    p = params.to(out.device)
    factors = (p.brightness, p.contrast, p.saturation, p.hue)
    if bool(p.jitter.any()):
        for step in range(4):
            op_at_step = p.order[:, step]
            for op_id, (op, strength) in enumerate(zip(_JITTER_OPS, cfg.jitter)):
                if strength == 0:
                    continue
                idx = torch.nonzero(p.jitter & (op_at_step == op_id)).flatten()
                if idx.numel():
                    out[idx] = op(out[idx], factors[op_id][idx])
    out = torch.where(p.gray.reshape(-1, 1, 1, 1), to_grayscale(out), out)
    if cfg.blur_p > 0:
        idx = torch.nonzero(p.blur).flatten()
        if idx.numel():
            out[idx] = gaussian_blur(out[idx], p.sigma[idx], cfg.blur_kernel_for(out.shape[-1]))
    return hflip(out, p.flip)


# --------------------------------------------------------------------------------------------------- multi-view


class MultiViewAugment:
    """``cfg.global_views`` (2) global views plus ``cfg.local_crops`` views per image, split into CPU crop and
    batched photometric."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self._specs: list[tuple[int, tuple[float, float]]] = [(cfg.size, cfg.scale)] * cfg.global_views + [
            (c.size, c.scale) for c in cfg.local_crops
        ]

    @property
    def view_sizes(self) -> list[int]:
        """Side of each view: the two globals, then the locals."""
        return [size for size, _ in self._specs]

    @property
    def num_views(self) -> int:
        return len(self._specs)

    def crop(self, img: Tensor, rng: np.random.Generator) -> list[Tensor]:
        """Per-image geometric stage: (C, H, W) uint8 -> one (3, S, S) uint8 crop per view."""
        if img.dtype != torch.uint8:
            raise TypeError(f"crop expects a uint8 image, got {img.dtype}")
        img = to_rgb(img)
        return [random_resized_crop(img, size, scale, self.cfg.ratio, rng) for size, scale in self._specs]

    def photometric(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Batched stage on batch's device: (B, 3, S, S) uint8 -> float32 in [0, 1], per-sample random params."""
        params = sample_photometric_params(batch.shape[0], self.cfg, generator, batch.device)
        return apply_photometric(batch, params, self.cfg)

    def normalize(self, x: Tensor) -> Tensor:
        """(x - mean) / std per channel on x's device; x float in [0, 1], (3, H, W) or (B, 3, H, W)."""
        mean = torch.tensor(self.cfg.mean, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)
        return (x.to(torch.float32) - mean) / std

    @staticmethod
    def to_uint8(x: Tensor) -> Tensor:
        """Float in [0, 1] -> uint8 by ``round(x * 255)`` clamped to [0, 255] (exact inverse of ``/ 255``)."""
        return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    def augment_batch(self, images: list[Tensor], rng: np.random.Generator, generator: torch.Generator) -> list[Tensor]:
        """All stages in one call: a list of uint8 images -> one normalised float32 (B, 3, S, S) tensor per view."""
        crops = [self.crop(img, rng) for img in images]
        views = []
        for v in range(self.num_views):
            batch = torch.stack([c[v] for c in crops])
            views.append(self.normalize(self.photometric(batch, generator)))
        return views


def torchvision_pipeline(
    cfg: AugmentConfig, size: int | None = None, scale: tuple[float, float] | None = None
) -> v2.Compose:
    """The classic per-image torchvision v2 pipeline for one view (reference/baseline for the batched path).

    ``size``/``scale`` default to the global view's; input is a PIL image or (C, H, W) tensor, uint8 expected.
    """
    size = cfg.size if size is None else size
    scale = cfg.scale if scale is None else scale
    b, c, s, h = cfg.jitter
    ops: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=scale, ratio=cfg.ratio, antialias=True),
        v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)], p=cfg.jitter_p),
        v2.RandomGrayscale(p=cfg.grayscale_p),
    ]
    if cfg.blur_p > 0:
        blur = v2.GaussianBlur(cfg.blur_kernel_for(size), sigma=cfg.blur_sigma)
        ops.append(v2.RandomApply([blur], p=cfg.blur_p))
    ops += [
        v2.RandomHorizontalFlip(p=cfg.flip_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
    ]
    return v2.Compose(ops)
