"""The E-step's settings: what to cluster into (``sizes``, with the K-means settings passed whole to every
K-means entry point) and the Ray actor pool that runs it."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hierclr.clustering.hierarchical import validate_sizes
from hierclr.clustering.settings import KMeansSettings
from hierclr.config.loader import Section


class ClusteringConfig(KMeansSettings):
    """E-step settings (spec "E-step"): the K-means settings, passed whole to the clustering functions,
    plus the prototype counts per level; defaults are the official HCSC ImageNet settings."""

    sizes: tuple[int, ...] = (3000, 2000, 1000)
    features: Literal["embed_pass", "train_keys"] = Field(
        "embed_pass", description="what the E-step clusters: embed_pass = the momentum encoder's features from a "
        "pass over the data (eval transform; the official code); train_keys = the latest momentum key of every "
        "image from the training steps (no extra pass; hierclr.methods.key_bank)")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return validate_sizes(v)


class ClusteringServiceSection(Section):
    """The Ray actor pool that runs the E-step's K-means."""

    num_actors: int = Field(1, ge=1, description=">1: level-0 K-means as distributed Lloyd over the actors")
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="0: CPU actors (faiss CPU); >0 and GPUs present: GPU")
    max_restarts: int = Field(1, ge=0, description="restarts of a failed actor; the E-step is retried once")
