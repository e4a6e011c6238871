"""Single-process HCSC pretraining on in-memory images: the quick-start demo and the smoke test.

It runs the same pieces the Ray pipeline will (E-step: momentum embeddings -> hierarchical K-means;
M-step: :func:`hcsc_train_step`) on synthetic images with planted classes, so it needs no download,
no Ray and no GPU, and it reports whether the representation picked the planted structure up.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torchvision.transforms import v2

from hierclr.clustering import hierarchical_kmeans
from hierclr.config.clustering import ClusteringConfig
from hierclr.config.pretrain import HCSCLossConfig
from hierclr.eval import clustering_scores, knn_accuracy
from hierclr.losses import HCSCObjective
from hierclr.methods.contrastive_step import embed_features, hcsc_train_step
from hierclr.models import MoCo

log = logging.getLogger(__name__)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class LocalRunConfig(BaseModel):
    """Settings of the local demo run (small defaults that finish in about a minute on 2 cores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_images: int = Field(512, ge=16)
    test_images: int = Field(256, ge=8)
    num_classes: int = Field(8, ge=2, description="planted fine classes; coarse = class // (num_classes // 2)")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.06, gt=0)
    backbone: str = "resnet18"
    queue_size: int = Field(256, ge=2)
    seed: int = 0
    loss: HCSCLossConfig = HCSCLossConfig(warmup_epochs=1)
    clustering: ClusteringConfig = ClusteringConfig(sizes=(32, 16, 8), nredo=2)


def synthetic_images(n: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(n, 3, 32, 32)`` uint8 images and ``(n,)`` labels: a class-coloured, class-oriented striped
    square at a random place and size on a noisy background. Classes ``c`` and ``c + K/2`` share the
    colour family, so the data has a two-level planted hierarchy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    hues = torch.linspace(0, 1, num_classes + 1)[:-1]
    imgs = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    for i in range(n):
        c = int(labels[i])
        h = float(hues[c % (num_classes // 2) if num_classes >= 4 else c]) * 2 * math.pi
        colour = torch.tensor([math.cos(h), math.cos(h + 2.1), math.cos(h + 4.2)]) * 0.4 + 0.55
        size = int(torch.randint(12, 24, (1,), generator=g))
        y0, x0 = (int(v) for v in torch.randint(0, 32 - size, (2,), generator=g))
        period = 2 + c % 3
        stripes = ((xx if c < num_classes // 2 else yy) // period) % 2
        patch = colour[:, None, None] * (0.6 + 0.4 * stripes[y0 : y0 + size, x0 : x0 + size])
        imgs[i, :, y0 : y0 + size, x0 : x0 + size] = patch
    return (imgs.clamp(0, 1) * 255).to(torch.uint8), labels


def moco_v2_augment() -> Callable[[Tensor], Tensor]:
    """MoCo v2 augmentation for 32 px uint8 images (blur omitted at this size, as CIFAR recipes do)."""
    return v2.Compose([
        v2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])


def eval_transform(images: Tensor) -> Tensor:
    return v2.Normalize(CIFAR_MEAN, CIFAR_STD)(images.float() / 255.0)


def run_local_hcsc(cfg: LocalRunConfig, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train MoCo v2 + HCSC for ``cfg.epochs`` on synthetic images; return per-epoch history and
    final kNN top-1 (backbone features, train -> test) and AMI of the prototypes vs the classes."""
    torch.manual_seed(cfg.seed)
    train_x, train_y = synthetic_images(cfg.train_images, cfg.num_classes, cfg.seed)
    test_x, test_y = synthetic_images(cfg.test_images, cfg.num_classes, cfg.seed + 1)
    model = MoCo(cfg.backbone, dim=128, queue_size=cfg.queue_size, cifar_stem=True)
    objective = HCSCObjective(cfg.loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    augment = moco_v2_augment()
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.train_images // cfg.batch_size
    history, protos = [], None
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:  # per-epoch cosine schedule (spec)
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
        protos = None
        if not objective.in_warmup(epoch):
            ids, feats = embed_features(model, _batches(train_x, cfg.batch_size))
            protos = hierarchical_kmeans(feats[torch.argsort(ids)], cfg.clustering.sizes, cfg.clustering, epoch=epoch)
        model.train()
        perm = torch.randperm(cfg.train_images, generator=gen)
        sums: dict[str, float] = {}
        for s in range(steps):
            ids = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            im_q = torch.stack([augment(img) for img in train_x[ids]])
            im_k = torch.stack([augment(img) for img in train_x[ids]])
            metrics = hcsc_train_step(model, objective, optimizer, im_q, im_k, ids, protos, generator=gen)
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(v)
        row = {"epoch": epoch, "warmup": protos is None, "seconds": round(time.perf_counter() - t0, 2)}
        row.update({key: v / steps for key, v in sums.items()})
        if protos is not None:
            row["ami_level0_vs_classes"] = clustering_scores(train_y, protos.assignments[:, 0])["ami"]
        history.append(row)
        if on_epoch:
            on_epoch(row)
    train_f = _backbone_features(model, train_x, cfg.batch_size)
    test_f = _backbone_features(model, test_x, cfg.batch_size)
    knn = knn_accuracy(train_f, train_y, test_f, test_y, ks=(20,), num_classes=cfg.num_classes)
    return {"history": history, "knn_top1_k20": knn["top1_k20"], "prototype_sizes": list(protos.sizes) if protos else None}


def _batches(images: Tensor, batch_size: int):
    for s in range(0, len(images), batch_size):
        yield eval_transform(images[s : s + batch_size]), torch.arange(s, min(s + batch_size, len(images)))


@torch.no_grad()
def _backbone_features(model: MoCo, images: Tensor, batch_size: int) -> Tensor:
    model.eval()
    out = torch.cat([model.backbone_features(x) for x, _ in _batches(images, batch_size)])
    model.train()
    return out
