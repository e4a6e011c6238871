"""Label subsets for the semi-supervised protocol: a seeded fraction of every class (spec "Evaluation
protocols": 1% / 10% of the labels). File lists (e.g. SimCLR's ``1percent.txt``) are applied when the data
is prepared: ``hierclr prepare-data ... --subset-file 1percent.txt``."""
from __future__ import annotations

import numpy as np


def per_class_subset(ids, labels, fraction: float, *, seed: int = 0, unlabelled: bool = False) -> np.ndarray:
    """Sorted dataset ids: ``max(1, round(fraction * n_c))`` ids drawn without replacement from every class c.
    Rows with label < 0 are never drawn, or, with ``unlabelled``, drawn as one more class (``data.fraction``).
    Deterministic for a seed, independent of the input order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = np.asarray(ids, np.int64)
    labels = np.asarray(labels, np.int64)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(f"ids and labels must be equal-length 1-D arrays, got {ids.shape} and {labels.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    order = np.argsort(ids, kind="stable")
    ids, labels = ids[order], labels[order]
    rng = np.random.default_rng(seed)
    keep = []
    if unlabelled:
        labels = np.maximum(labels, -1)
    for c in np.unique(labels if unlabelled else labels[labels >= 0]):
        members = ids[labels == c]
        n = max(1, round(fraction * len(members)))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
