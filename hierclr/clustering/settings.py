"""K-means settings, passed whole to every clustering function so each default lives here once.

Defaults are the official HCSC ImageNet settings (faiss, ``niter=20, nredo=5``). The config section
``clustering`` (:class:`~hierclr.config.clustering.ClusteringConfig`) is this class plus ``sizes``.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

Backend = Literal["auto", "faiss", "torch"]


class KMeansSettings(BaseModel):
    """How to run K-means (spec "E-step") and turn its distances into phi (Eq. 3)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    niter: int = Field(20, ge=1)
    nredo: int = Field(5, ge=1)
    temperature: float = Field(0.2, gt=0, description="mean phi after rescaling (Eq. 3)")
    smooth: float = Field(10.0, gt=0, description="epsilon of Eq. 3")
    min_cluster_size: int = Field(0, ge=0, description="paper option: drop level-0 clusters smaller than this")
    seed: int = 0
    backend: Backend = "auto"
    max_points_per_centroid: int = Field(1000, ge=1)
    min_points_per_centroid: int = Field(10, ge=1)
    device: str | None = Field(None, description="where to cluster, e.g. 'cuda:0' (None: CPU)")

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v):
        return str(v) if isinstance(v, torch.device) else v


DEFAULTS = KMeansSettings()  # the official settings, the default argument of kmeans/hierarchical_kmeans
