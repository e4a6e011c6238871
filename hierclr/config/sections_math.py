"""Typed, validated configuration (pydantic). A bad value fails here, naming the field.

This module holds the sections the math core needs; the pipeline issues extend the tree (data,
training, tracking) in the same style. ``compat="official"`` presets reproduce the authors' code;
``compat="paper"`` switches the documented differences to the paper's reading.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hierclr.clustering.hierarchical import validate_sizes
from hierclr.clustering.settings import KMeansSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ClusteringConfig(KMeansSettings):
    """E-step settings (spec "E-step"): the K-means settings, passed whole to the clustering functions,
    plus the prototype counts per level; defaults are the official HCSC ImageNet settings."""

    sizes: tuple[int, ...] = (3000, 2000, 1000)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return validate_sizes(v)


class HCSCLossConfig(_Section):
    """The HCSC objective: loss options and the ablation switches of paper Table 5."""

    temperature: float = Field(0.2, gt=0, description="instance temperature T")
    negative_drop: Literal["zero", "remove"] = "zero"
    instance_level_reduction: Literal["sum", "mean"] = "sum"
    warmup_epochs: int = Field(20, ge=0, description="epochs of plain InfoNCE before clustering starts")
    hierarchical_prototypes: bool = Field(True, description="HP: all levels (False: level 0 only)")
    instance_loss: bool = Field(True, description="IL")
    prototype_loss: bool = Field(True, description="PL")
    instance_selection: bool = Field(True, description="IS")
    prototype_selection: bool = Field(True, description="PS")
    selection_on_local: bool = Field(True, description="multi-crop: local views reuse the instance masks")

    @model_validator(mode="after")
    def _some_loss(self) -> HCSCLossConfig:
        if not (self.instance_loss or self.prototype_loss):
            raise ValueError("instance_loss and prototype_loss are both off: the objective would be empty")
        return self


class ModelConfig(_Section):
    backbone: Literal["resnet10", "resnet18", "resnet50"] = "resnet50"
    cifar_stem: bool = False
    dim: int = Field(128, ge=1)
    hidden_dim: int | None = Field(None, ge=1)
    queue_size: int = Field(16384, ge=1)
    momentum: float = Field(0.999, ge=0.0, le=1.0)


class HCSCConfig(_Section):
    """Everything the HCSC math needs, with the ``compat`` preset applied on construction."""

    compat: Literal["official", "paper"] = "official"
    model: ModelConfig = ModelConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    loss: HCSCLossConfig = HCSCLossConfig()

    @classmethod
    def preset(cls, compat: Literal["official", "paper"], **sections) -> HCSCConfig:
        """``official``: the authors' code. ``paper``: remove dropped negatives, mean over instance
        levels (Eq. 6), drop clusters under 10 images (Sec. 5.1). Explicit ``sections`` win."""
        if compat == "paper":
            loss = {"negative_drop": "remove", "instance_level_reduction": "mean", **sections.pop("loss", {})}
            clustering = {"min_cluster_size": 10, **sections.pop("clustering", {})}
            return cls(compat=compat, loss=loss, clustering=clustering, **sections)
        return cls(compat=compat, **sections)
