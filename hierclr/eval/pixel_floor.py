"""The raw-pixel kNN floor: what a representation must beat before it has learned anything.

Pixels are standardised per channel with the training split's mean and std, flattened and searched with the
same kNN as the learned features (cosine, weighted vote exp(sim / 0.07), paper Eq. 11). The same protocol
gives the CIFAR-10 floor of ``shared/data/README.md`` (45.8% at k = 20).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hierclr.eval.knn import knn_accuracy


def standardised_pixels(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C)`` uint8 -> ``(N, H*W*C)`` float32 of ``(x / 255 - mean) / std`` per channel."""
    x = (np.asarray(images, dtype=np.float64) / 255.0 - mean) / std
    return torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))


def pixel_knn_floor(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                    test_labels: np.ndarray, ks: Sequence[int], num_classes: int | None = None) -> dict:
    """kNN top-1 of raw standardised pixels, train -> test: the keys of :func:`knn_accuracy`."""
    pix = np.asarray(train_images, dtype=np.float64).reshape(-1, np.shape(train_images)[-1]) / 255.0
    mean, std = pix.mean(0), pix.std(0)
    std = np.where(std > 0, std, 1.0)  # a constant channel stays 0
    return knn_accuracy(standardised_pixels(train_images, mean, std), torch.as_tensor(train_labels),
                        standardised_pixels(test_images, mean, std), torch.as_tensor(test_labels), ks=ks,
                        num_classes=num_classes)
