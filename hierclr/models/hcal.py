"""HCAL's head: a projection to the level-0 feature space and one learnable prototype per class per level.

Paper: "Hierarchy-Consistent Learning and Adaptive Loss Balancing for Hierarchical Multi-Label
Classification" (arXiv 2508.13452; no public code). The backbone's pooled features go through a
projection to the ``d = 256`` level-0 features ``F^1`` (L2-normalised); each level keeps a learnable
prototype matrix (Eq. 3), perturbed with Gaussian noise in training (Eq. 3-4). The loss (per-level
InfoNCE, bottom-up aggregation, adaptive weights) lives in :mod:`hierclr.losses.hcal`.

Levels are hierclr's (:mod:`hierclr.labels.hierarchy`): level 0 is the finest, ``1 .. L-1`` coarser;
**paper level k = our level k-1** (the paper's ``F^1`` is our level-0 feature).

One training step::

    feats = head(backbone(images))                                     # (B, d), unit rows
    protos = [head.level_prototypes(l) for l in range(head.num_levels)]  # perturbed in train mode
    loss = hcal_loss(feats, labels, protos)

The paper trains with SGD at lr 0.01 for the backbone and 0.05 for the level-0 prototypes, doubling per
level: build param groups from :meth:`HCALHead.projection_parameters` and
:meth:`HCALHead.prototype_parameters`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hierclr.eval.hierarchical import parent_tables
from hierclr.models.heads import MLPHead

Readout = Literal["independent", "bottom_up"]
READOUTS = ("independent", "bottom_up")


class HCALHead(nn.Module):
    """Projection ``in_dim -> feat_dim`` and prototypes ``prototypes[l]`` of shape ``(num_classes[l], feat_dim)``.

    Args:
        in_dim: dimension of the backbone features.
        num_classes: classes per level, finest first (``LabelHierarchy.sizes``).
        feat_dim: ``d`` of the level features and prototypes (paper: 256).
        perturbation: ``epsilon``, the std of the Gaussian noise added to every prototype entry in training
            (paper Eq. 3-4, best 0.05); 0 turns the perturbation off.
        hidden_dim: ``None``: the projection is one ``Linear``; otherwise an MLP
            ``Linear(in, hidden) - ReLU - Linear(hidden, feat_dim)`` (:class:`~hierclr.models.heads.MLPHead`).

    Prototype init (the paper: "randomly"): every row drawn from ``N(0, I)`` and scaled to unit norm, i.e.
    directions uniform on the sphere, from torch's global RNG (seed it with ``torch.manual_seed``). Unit
    rows make ``perturbation`` an absolute scale relative to a unit prototype: the noise vector's norm is
    about ``perturbation * sqrt(feat_dim)`` (0.8 at the paper's 0.05 and 256). Training changes the raw
    rows' norms (weight decay shrinks them, which strengthens the noise relatively): exclude the prototypes
    from weight decay to keep the scale. :meth:`init_prototypes` offers a data-driven init instead.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: Sequence[int],
        *,
        feat_dim: int = 256,
        perturbation: float = 0.05,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        num_classes = [int(c) for c in num_classes]
        if not num_classes or min(num_classes) <= 0:
            raise ValueError(f"num_classes must list at least one level, each with > 0 classes, got {num_classes}")
        for field, value in (("in_dim", in_dim), ("feat_dim", feat_dim)):
            if value <= 0:
                raise ValueError(f"HCALHead {field} must be > 0, got {value}")
        if perturbation < 0:
            raise ValueError(f"perturbation must be >= 0, got {perturbation}")
        if hidden_dim is None:
            self.projection: nn.Module = nn.Linear(in_dim, feat_dim)
        else:
            self.projection = MLPHead(in_dim, hidden_dim, feat_dim)
        self.prototypes = nn.ParameterList(
            nn.Parameter(F.normalize(torch.randn(c, feat_dim), dim=1)) for c in num_classes
        )
        self.num_classes = tuple(num_classes)
        self.num_levels = len(num_classes)
        self.feat_dim = feat_dim
        self.in_dim = in_dim
        self.perturbation = float(perturbation)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim)`` backbone features -> ``(B, feat_dim)`` L2-normalised level-0 features ``F^1``."""
        return F.normalize(self.projection(x), dim=1)

    def level_prototypes(self, level: int, generator: torch.Generator | None = None) -> Tensor:
        """``(C_l, feat_dim)`` L2-normalised prototypes of ``level``.

        In training mode (``self.training``) ``N(0, perturbation^2)`` noise is added to every entry of the
        raw prototypes *before* the normalisation (Eq. 3-4), fresh each call; ``generator`` (on the
        prototypes' device) makes the draw reproducible. In eval mode: no noise, deterministic.
        """
        protos = self.prototypes[self._level(level)]
        if self.training and self.perturbation > 0:
            noise = torch.randn(protos.shape, generator=generator, device=protos.device, dtype=protos.dtype)
            protos = protos + self.perturbation * noise
        return F.normalize(protos, dim=1)

    @torch.no_grad()
    def predict(
        self,
        feats: Tensor,
        *,
        readout: Readout = "independent",
        parents: Sequence[Tensor | np.ndarray] | None = None,
    ) -> Tensor:
        """Predicted class per level from level-0 features.

        Args:
            feats: ``(B, feat_dim)`` level-0 features (:meth:`forward`).
            readout: the paper does not say how predictions are read out.
                ``"independent"`` (default): at every level the nearest prototype by cosine, always without
                perturbation (whatever ``self.training``); the levels may disagree with the tree, which is
                what the HVR measures. ``"bottom_up"``: level 0 as above, level ``l + 1`` the parent of the
                level-``l`` prediction; consistent by construction (HVR 0).
            parents: ``L - 1`` parent tables (``hierclr.eval.hierarchical.parent_tables``), needed by
                ``"bottom_up"``, ignored otherwise.

        Returns:
            ``(B, L)`` int64 on ``feats``' device.
        """
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if feats.dim() != 2 or feats.shape[1] != self.feat_dim:
            raise ValueError(f"feats must be (B, {self.feat_dim}), got {tuple(feats.shape)}")
        levels = range(self.num_levels) if readout == "independent" else range(1)
        preds = [(feats @ self._clean_prototypes(l).to(feats.dtype).T).argmax(dim=1) for l in levels]
        if readout == "bottom_up" and self.num_levels > 1:
            if parents is None or len(parents) != self.num_levels - 1:
                got = None if parents is None else len(parents)
                raise ValueError(f"readout='bottom_up' needs {self.num_levels - 1} parent tables, got {got}")
            for level, table in enumerate(parents):
                table = torch.as_tensor(table, dtype=torch.long, device=feats.device)
                below = preds[-1]
                up = table[below.clamp_max(table.shape[0] - 1)]
                bad = (below >= table.shape[0]) | (up < 0) | (up >= self.num_classes[level + 1])
                if bad.any():
                    j = int(below[bad.nonzero()[0]])
                    raise ValueError(f"class {j} of level {level} has no parent at level {level + 1} in "
                                     f"parents[{level}] ({table.shape[0]} entries)")
                preds.append(up)
        return torch.stack(preds, dim=1)

    @torch.no_grad()
    def init_prototypes(self, class_means: Tensor, level_map: np.ndarray | Tensor) -> None:
        """Data-driven init (beyond the paper, which initialises randomly).

        ``prototypes[0][c] <- normalize(class_means[c])``; then level by level ``prototypes[l+1][j] <-
        normalize(mean_c normalize(prototypes[l][c]))`` over the children ``c`` of ``j`` that were set from
        data. A fine class without samples is marked by a row of ``class_means`` that is not all finite
        (``NaN``: what ``sum / count`` gives for ``count = 0``); it keeps its random init and is left out of
        its parent's mean. A coarser class none of whose children was set (or which ``level_map`` never
        reaches) keeps its random init as well.

        Args:
            class_means: ``(num_classes[0], feat_dim)`` mean level-0 feature per fine class.
            level_map: ``(num_classes[0], L)`` class of each fine class at every level (column 0 = the
                class itself), a tree.

        Raises:
            ValueError: shapes that do not match the head, a column 0 that is not ``0 .. C0-1``, classes out
                of range, a finite zero row in ``class_means``, or a ``level_map`` that is not a tree.
        """
        lm = np.asarray(level_map.detach().cpu() if isinstance(level_map, Tensor) else level_map)
        c0 = self.num_classes[0]
        if lm.ndim != 2 or lm.shape != (c0, self.num_levels) or lm.dtype.kind not in "iu":
            raise ValueError(f"level_map must be a ({c0}, {self.num_levels}) integer array, got {lm.dtype} "
                             f"{lm.shape}")
        lm = lm.astype(np.int64)
        if not np.array_equal(lm[:, 0], np.arange(c0)):
            raise ValueError("level_map[:, 0] must be 0 .. C0-1 (row c is fine class c)")
        too_big = lm >= np.asarray(self.num_classes)
        if too_big.any():
            r, level = np.argwhere(too_big)[0]
            raise ValueError(f"level_map[{r}, {level}] = {lm[r, level]} but level {level} has "
                             f"{self.num_classes[level]} classes")
        tables = parent_tables(lm)
        if class_means.shape != (c0, self.feat_dim):
            raise ValueError(f"class_means must be ({c0}, {self.feat_dim}), got {tuple(class_means.shape)}")
        proto0 = self.prototypes[0]
        means = class_means.detach().to(device=proto0.device, dtype=proto0.dtype)
        informed = torch.isfinite(means).all(dim=1)
        zero = informed & (means.norm(dim=1) == 0)
        if zero.any():
            raise ValueError(f"class_means row {int(zero.nonzero()[0])} is zero: it has no direction "
                             "(mark classes without samples with NaN)")
        proto0[informed] = F.normalize(means[informed], dim=1)
        for level, table in enumerate(tables):
            child, parent = self.prototypes[level], self.prototypes[level + 1]
            table = torch.as_tensor(table, device=child.device)
            kids = informed[: table.shape[0]].nonzero().squeeze(1)
            ups = table[kids]
            total = torch.zeros_like(parent).index_add_(0, ups, F.normalize(child[kids], dim=1))
            count = torch.bincount(ups, minlength=parent.shape[0])
            informed = count > 0
            parent[informed] = F.normalize(total[informed], dim=1)

    def prototype_parameters(self, level: int) -> nn.Parameter:
        """The raw (un-normalised) prototype matrix of ``level``, for its own optimizer param group."""
        return self.prototypes[self._level(level)]

    def projection_parameters(self) -> list[nn.Parameter]:
        """Parameters of the projection (they train at the backbone / head lr)."""
        return list(self.projection.parameters())

    def _clean_prototypes(self, level: int) -> Tensor:
        return F.normalize(self.prototypes[self._level(level)], dim=1)

    def _level(self, level: int) -> int:
        if not 0 <= int(level) < self.num_levels:
            raise ValueError(f"level must be in 0..{self.num_levels - 1}, got {level}")
        return int(level)
