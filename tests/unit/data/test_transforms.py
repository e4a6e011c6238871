"""Augmentation stages: batched per-sample ops against torchvision's per-image functional ops, crops, configs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from hierclr.data.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    CropSpec,
    EvalTransformConfig,
    MultiViewAugment,
    PhotometricParams,
    TransformConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_photometric,
    eval_transform,
    gaussian_blur,
    hflip,
    random_resized_crop,
    sample_crop_box,
    sample_photometric_params,
    to_grayscale,
    torchvision_pipeline,
)

TV_OPS = {0: tvf.adjust_brightness, 1: tvf.adjust_contrast, 2: tvf.adjust_saturation, 3: tvf.adjust_hue}


def _images(b: int = 8, h: int = 17, w: int = 23, seed: int = 0) -> torch.Tensor:
    """Random float images in [0, 1] with some gray pixels and two-channel-max ties (HSV edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    x[:, :, 0, :5] = x[:, :1, 0, :5]  # r == g == b
    x[:, 1, 1, :5] = x[:, 0, 1, :5]  # r == g
    x[:, 2, 2, :5] = x[:, 1, 2, :5]  # g == b
    x[:, :, 3, :3] = 0.0
    x[:, :, 3, 3:6] = 1.0
    return x


def _reference(x: torch.Tensor, fn, factors) -> torch.Tensor:
    return torch.stack([fn(img, float(f)) for img, f in zip(x, factors)])


@pytest.mark.parametrize(
    ("op", "tv_op", "edges", "hi"),
    [
        (adjust_brightness, tvf.adjust_brightness, [0.0, 1.0, 2.0], 2.0),
        (adjust_contrast, tvf.adjust_contrast, [0.0, 1.0, 2.0], 2.0),
        (adjust_saturation, tvf.adjust_saturation, [0.0, 1.0, 2.0], 2.0),
    ],
)
def test_blend_ops_match_torchvision(op, tv_op, edges, hi):
    x = _images()
    f = torch.rand(8, generator=torch.Generator().manual_seed(1)) * hi
    f[: len(edges)] = torch.tensor(edges)
    out = op(x, f)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(x, tv_op, f), atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_adjust_hue_matches_torchvision():
    x = _images(b=10)
    h = torch.rand(10, generator=torch.Generator().manual_seed(2)) - 0.5
    h[:5] = torch.tensor([-0.5, 0.5, 0.0, 0.25, -1 / 6])
    # 1e-5 holds: same HSV sector formula; only float op order differs from torchvision
    torch.testing.assert_close(adjust_hue(x, h), _reference(x, tvf.adjust_hue, h), atol=1e-5, rtol=0)


def test_to_grayscale_and_hflip_match_torchvision():
    x = _images()
    ref = torch.stack([tvf.rgb_to_grayscale(img, num_output_channels=3) for img in x])
    torch.testing.assert_close(to_grayscale(x), ref, atol=1e-6, rtol=0)
    mask = torch.tensor([True, False, True, True, False, False, True, False])
    ref = torch.stack([tvf.horizontal_flip(img) if m else img for img, m in zip(x, mask)])
    assert torch.equal(hflip(x, mask), ref)


@pytest.mark.parametrize("kernel", [3, 9, 23])
def test_gaussian_blur_matches_torchvision(kernel):
    x = _images(b=6, h=32, w=40)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0, 3.3])
    ref = torch.stack([tvf.gaussian_blur(img, [kernel, kernel], [float(s), float(s)]) for img, s in zip(x, sigma)])
    torch.testing.assert_close(gaussian_blur(x, sigma, kernel), ref, atol=1e-5, rtol=0)


def test_apply_photometric_matches_torchvision_sequence():
    cfg = AugmentConfig(size=32)
    kernel = cfg.blur_kernel_for(32)
    assert kernel == 3
    x8 = (_images(b=4, h=32, w=32, seed=3) * 255).round().to(torch.uint8)
    params = PhotometricParams(
        jitter=torch.tensor([True, False, True, False]),
        brightness=torch.tensor([1.3, 0.7, 0.6, 1.2]),
        contrast=torch.tensor([0.7, 1.4, 1.35, 0.9]),
        saturation=torch.tensor([1.2, 0.0, 0.65, 1.1]),
        hue=torch.tensor([0.08, -0.1, -0.05, 0.1]),
        order=torch.tensor([[3, 0, 2, 1], [0, 1, 2, 3], [1, 2, 0, 3], [2, 3, 1, 0]]),
        gray=torch.tensor([False, True, True, False]),
        blur=torch.tensor([True, True, False, False]),
        sigma=torch.tensor([1.5, 0.4, 1.0, 1.0]),
        flip=torch.tensor([False, True, True, False]),
    )
    out = apply_photometric(x8, params, cfg)
    factors = (params.brightness, params.contrast, params.saturation, params.hue)
    for i in range(4):
        img = x8[i].float() / 255
        if params.jitter[i]:
            for op_id in params.order[i].tolist():
                img = TV_OPS[op_id](img, float(factors[op_id][i]))
        if params.gray[i]:
            img = tvf.rgb_to_grayscale(img, num_output_channels=3)
        if params.blur[i]:
            img = tvf.gaussian_blur(img, [kernel, kernel], [float(params.sigma[i])] * 2)
        if params.flip[i]:
            img = tvf.horizontal_flip(img)
        torch.testing.assert_close(out[i], img, atol=1e-5, rtol=0)
    assert torch.equal(out[3], x8[3].float() / 255)  # no op selected: untouched
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    # float input gives the same result and is not modified in place
    xf = x8.float() / 255
    torch.testing.assert_close(apply_photometric(xf, params, cfg), out, atol=0, rtol=0)
    assert torch.equal(xf, x8.float() / 255)


def test_sample_crop_box_statistics():
    rng = np.random.default_rng(0)
    height, width, scale, ratio = 300, 400, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = np.array([sample_crop_box(height, width, scale, ratio, rng) for _ in range(2000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    # rounding w, h to integers moves area and ratio a little: bound with +-0.5 per side
    area = height * width
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all() and ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()
    # same distribution as torchvision's sampler (mean area fraction, independent torch draws)
    torch.manual_seed(0)
    tv = np.array([v2.RandomResizedCrop.get_params(torch.zeros(3, height, width), list(scale), list(ratio))
                   for _ in range(2000)])
    ours_frac, tv_frac = (h * w).mean() / area, (tv[:, 2] * tv[:, 3]).mean() / area
    assert abs(ours_frac - tv_frac) < 0.03
    assert len({(a, b) for a, b in zip(top, left)}) > 1000  # positions vary


@pytest.mark.parametrize(("height", "width"), [(1000, 10), (10, 1000)])
def test_sample_crop_box_fallback_matches_torchvision(height, width):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    box = sample_crop_box(height, width, scale, ratio, np.random.default_rng(0))
    tv = v2.RandomResizedCrop.get_params(torch.zeros(1, height, width), list(scale), list(ratio))
    assert box == tuple(tv)
    if height > width:  # hand-computed central crop: w = 10, h = round(10 / 0.75) = 13
        assert box == ((1000 - 13) // 2, 0, 13, 10)


def test_random_resized_crop_uses_box_and_antialias():
    img = (torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    out = random_resized_crop(img, 24, (0.2, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5))
    top, left, h, w = sample_crop_box(60, 80, (0.2, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5))
    assert out.dtype == torch.uint8 and out.shape == (3, 24, 24)
    assert torch.equal(out, tvf.resized_crop(img, top, left, h, w, [24, 24], antialias=True))


@pytest.mark.parametrize(
    ("preset", "hw", "sizes"),
    [
        ("imagenet", (300, 400), [224, 224]),
        ("imagenet_multicrop", (300, 400), [224, 224, 192, 160, 128, 96]),
        ("cifar", (32, 32), [32, 32]),
    ],
)
def test_multiview_shapes_ranges_and_normalize(preset, hw, sizes):
    cfg = TransformConfig.preset(preset).train
    aug = MultiViewAugment(cfg)
    assert aug.view_sizes == sizes and aug.num_views == len(sizes)
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, *hw, generator=g) * 255).to(torch.uint8) for _ in range(3)]
    images.append((torch.rand(1, *hw, generator=g) * 255).to(torch.uint8))  # grayscale input
    rng = np.random.default_rng(0)
    crops = [aug.crop(img, rng) for img in images]
    for per_image in crops:
        assert [c.shape for c in per_image] == [(3, s, s) for s in sizes]
        assert all(c.dtype == torch.uint8 for c in per_image)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    for v, s in enumerate(sizes):
        batch = torch.stack([c[v] for c in crops])
        x = aug.photometric(batch, g)
        assert x.shape == (4, 3, s, s) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        torch.testing.assert_close(aug.normalize(x), (x - mean) / std)
    views = aug.augment_batch(images, np.random.default_rng(1), torch.Generator().manual_seed(1))
    assert [tuple(t.shape) for t in views] == [(4, 3, s, s) for s in sizes]
    assert all(t.dtype == torch.float32 for t in views)


def test_multiview_seeded():
    aug = MultiViewAugment(TransformConfig.preset("imagenet_multicrop").train)
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, 120, 150, generator=g) * 255).to(torch.uint8) for _ in range(3)]

    def run(rng_seed: int, gen_seed: int) -> list[torch.Tensor]:
        return aug.augment_batch(images, np.random.default_rng(rng_seed), torch.Generator().manual_seed(gen_seed))

    a, b = run(0, 0), run(0, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[0], a[1])  # the two global views differ
    assert not torch.allclose(a[0], run(1, 0)[0])  # different crops
    assert not torch.allclose(a[0], run(0, 1)[0])  # different photometric draws


def test_sample_photometric_params_statistics():
    cfg = AugmentConfig()
    n = 4000
    p = sample_photometric_params(n, cfg, torch.Generator().manual_seed(0), "cpu")
    assert len(p) == n
    for mask, prob in [(p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.5), (p.flip, 0.5)]:
        assert mask.dtype == torch.bool and mask.shape == (n,)
        assert abs(mask.float().mean().item() - prob) < 4 * math.sqrt(prob * (1 - prob) / n)
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.min() >= 0.6 and f.max() <= 1.4 and abs(f.mean().item() - 1.0) < 0.02
    assert p.hue.min() >= -0.1 and p.hue.max() <= 0.1
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    assert len({tuple(r) for r in p.order.tolist()}) == 24  # all permutations occur
    q = sample_photometric_params(n, cfg, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(p.order, q.order) and torch.equal(p.sigma, q.sigma)
    # jitter strength clips at 0 like ColorJitter: brightness 1.5 -> [0, 2.5]
    wide = sample_photometric_params(n, AugmentConfig(jitter=(1.5, 0, 0, 0.5)), torch.Generator().manual_seed(1))
    assert wide.brightness.min() >= 0 and wide.brightness.max() <= 2.5 and wide.brightness.min() < 0.1
    assert torch.all(wide.contrast == 1.0)


def test_eval_transform():
    img = (torch.rand(3, 300, 400, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    ref = v2.Compose([v2.Resize(256), v2.CenterCrop(224)])(img)
    out = eval_transform(img, EvalTransformConfig())
    assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)
    assert torch.equal(out, ref)
    small = (torch.rand(3, 32, 32) * 255).to(torch.uint8)
    assert eval_transform(small, TransformConfig.preset("cifar").eval) is small
    gray = img[:1]
    out = eval_transform(gray, EvalTransformConfig())
    assert out.shape == (3, 224, 224) and torch.equal(out[0], out[2])
    rgba = torch.cat([img, torch.zeros_like(img[:1])])
    assert torch.equal(eval_transform(rgba, EvalTransformConfig()), ref)


def test_presets():
    assert TransformConfig.preset("imagenet") == TransformConfig()
    multi = TransformConfig.preset("imagenet_multicrop").train
    assert [(c.size, c.scale) for c in multi.local_crops] == [
        (192, (0.172, 0.86)), (160, (0.143, 0.715)), (128, (0.114, 0.571)), (96, (0.086, 0.429))
    ]
    cifar = TransformConfig.preset("cifar")
    assert cifar.train.size == 32 and cifar.train.blur_p == 0 and cifar.train.mean == CIFAR_MEAN
    assert cifar.eval.resize == cifar.eval.crop == 32 and cifar.eval.std == CIFAR_STD
    d = AugmentConfig()
    assert d.blur_kernel_for(224) == 23 and d.mean == IMAGENET_MEAN and d.std == IMAGENET_STD
    assert AugmentConfig(blur_kernel=5).blur_kernel_for(224) == 5


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (AugmentConfig, {"blur_kernel": 4}, "blur_kernel"),
        (AugmentConfig, {"jitter_p": 1.5}, "jitter_p"),
        (AugmentConfig, {"flip_p": -0.1}, "flip_p"),
        (AugmentConfig, {"jitter": (0.4, 0.4, 0.4, 0.6)}, "jitter"),
        (AugmentConfig, {"scale": (0.0, 1.0)}, "scale"),
        (AugmentConfig, {"scale": (0.5, 0.2)}, "scale"),
        (AugmentConfig, {"std": (0.2, 0.0, 0.2)}, "std"),
        (AugmentConfig, {"mean": (0.5, 0.5)}, "mean"),
        (AugmentConfig, {"unknown": 1}, "unknown"),
        (CropSpec, {"size": 96, "scale": (0.1, 1.2)}, "scale"),
        (CropSpec, {"size": 0, "scale": (0.1, 0.5)}, "size"),
        (EvalTransformConfig, {"crop": 300}, "crop"),
    ],
)
def test_config_validation(cls, kwargs, field):
    with pytest.raises(ValidationError) as err:
        cls(**kwargs)
    assert field in str(err.value)


def test_to_uint8_rounds():
    x = torch.tensor([0.0, 0.2, 0.5, 1 / 255 * 0.49, 1 / 255 * 0.51, 254.6 / 255, 1.0, 1.3, -0.2])
    out = MultiViewAugment.to_uint8(x)
    assert out.dtype == torch.uint8
    assert out.tolist() == [0, 51, 128, 0, 1, 255, 255, 255, 0]
    y = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(MultiViewAugment.to_uint8(y.float() / 255), y)  # exact round trip


def test_torchvision_pipeline():
    cfg = TransformConfig.preset("imagenet_multicrop").train
    pipe = torchvision_pipeline(cfg)
    names = [type(t).__name__ for t in pipe.transforms]
    assert names == ["ToImage", "RandomResizedCrop", "RandomApply", "RandomGrayscale", "RandomApply",
                     "RandomHorizontalFlip", "ToDtype", "Normalize"]
    img = (torch.rand(3, 300, 400, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    torch.manual_seed(0)
    out = pipe(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    local = torchvision_pipeline(cfg, size=96, scale=(0.086, 0.429))
    assert local(img).shape == (3, 96, 96)
    assert local.transforms[4].transforms[0].kernel_size == (9, 9)
    cifar = torchvision_pipeline(TransformConfig.preset("cifar").train)
    assert len(cifar.transforms) == 7  # blur_p = 0: no GaussianBlur step
    assert cifar(img[:, :32, :32]).shape == (3, 32, 32)


def test_linear_presets_give_one_plain_view():
    from hierclr.data.transforms import MultiViewAugment, TransformConfig

    for name, size in (("imagenet_linear", 224), ("cifar_linear", 32)):
        t = TransformConfig.preset(name)
        aug = MultiViewAugment(t.train)
        assert aug.num_views == 1 and aug.view_sizes == [size]
        assert t.train.jitter_p == t.train.grayscale_p == t.train.blur_p == 0.0 and t.train.flip_p == 0.5
    assert MultiViewAugment(TransformConfig.preset("cifar").train).num_views == 2


def test_pretraining_refuses_a_one_view_transform():
    from hierclr.config.pretrain import load_config

    with pytest.raises(ValueError, match="two"):
        load_config("demo", ["data.transforms=cifar_linear"])
