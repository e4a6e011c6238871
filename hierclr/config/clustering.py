"""The E-step's settings: what to cluster into (``sizes``, with the K-means settings passed whole to every
K-means entry point), the Ray actor pool that runs it, and where those actors go (:func:`actor_layout`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hierclr.clustering.hierarchical import validate_sizes
from hierclr.clustering.settings import KMeansSettings
from hierclr.config.loader import Section
from hierclr.config.sections import ResourcesSection


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

    num_actors: int | None = Field(None, ge=1, description=">1: level-0 K-means as distributed Lloyd over the "
                                                           "actors; null: one per training worker with gpu_share "
                                                           "on GPU workers, else 1")
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="0: CPU actors (faiss CPU); >0 and GPUs present: GPU "
                                                         "actors on GPUs of their own (see gpu_share)")
    gpu_share: float | None = Field(None, gt=0, lt=1, description="GPU workers: each K-means actor takes this share "
                                    "of a training worker's GPU (the worker asks for the rest) and is started "
                                    "on that worker's node once the workers are placed; null: off. Ignored on "
                                    "CPU workers")
    max_restarts: int = Field(1, ge=0, description="restarts of a failed actor; the E-step is retried once")

    @model_validator(mode="after")
    def _one_gpu_mode(self) -> ClusteringServiceSection:
        if self.gpu_share is not None and self.gpus_per_actor > 0:
            raise ValueError(f"service.gpu_share ({self.gpu_share:g}: actors on the training workers' GPUs) and "
                             f"service.gpus_per_actor ({self.gpus_per_actor:g}: actors on GPUs of their own) "
                             "exclude each other; set one of them")
        if self.gpu_share is not None and abs(round(self.gpu_share, 4) - self.gpu_share) > 1e-12:
            raise ValueError(f"service.gpu_share ({self.gpu_share!r}) has more than 4 decimals: Ray rounds GPU "
                             "requests to 1e-4, so the worker's and the actor's rounded shares could exceed one GPU "
                             "together and never be scheduled")
        return self


RAY_GPU_STEP = 1e-4  # Ray's resource precision (FixedPoint): requests are rounded to it


@dataclass(frozen=True)
class ActorLayout:
    """What one run's Train workers and K-means actors ask of Ray (:func:`actor_layout`).

    ``worker_gpus``: each Train worker's GPU request (0 on CPU workers). ``actor_options``: each K-means actor's
    ``num_cpus`` / ``num_gpus``. ``on_worker_gpus``: the actors share the workers' GPUs (``service.gpu_share``):
    they are started after the workers are placed, actor ``i`` on the node of rank ``i``."""

    num_actors: int
    actor_options: dict
    worker_gpus: float
    on_worker_gpus: bool = False

    @property
    def actor_cpus(self) -> float:
        return float(self.actor_options.get("num_cpus", 0.0))

    @property
    def actor_gpus(self) -> float:
        return float(self.actor_options.get("num_gpus", 0.0))


def actor_layout(service: ClusteringServiceSection, resources: ResourcesSection | None = None) -> ActorLayout:
    """The K-means actors' count and Ray options, and each Train worker's GPU request; the one place these
    rules live (the driver, the resource checks, the sweep's concurrency and the cluster-config tests read it).

    * ``service.gpu_share = s`` on GPU workers (``resources.use_gpu``): ``service.num_actors`` actors (default
      one per worker, at most one per worker) of ``num_gpus=s, num_cpus=0``, and each worker asks for
      ``gpus_per_worker - s``. The actor's share comes out of its worker's request, so a worker and its actor
      hold together what the worker alone held (``gpus_per_worker <= 1``: one GPU or a fraction of one): no
      GPU is ever asked for more than it has, and the run needs the same GPUs as without clustering.
    * otherwise today's rules: ``service.num_actors`` actors (default 1), each ``num_gpus=gpus_per_actor,
      num_cpus=0`` when ``gpus_per_actor > 0``, else ``num_cpus=cpus_per_actor``; workers ask for
      ``gpus_per_worker``. ``gpu_share`` is ignored on CPU workers, so a GPU preset runs unchanged on a laptop.

    Raises ValueError naming the fields for a combination Ray could never schedule.
    """
    resources = resources if resources is not None else ResourcesSection()
    worker_gpus = resources.gpus_per_worker if resources.use_gpu else 0.0
    share = service.gpu_share
    if share is None or not resources.use_gpu:
        opts = ({"num_cpus": 0.0, "num_gpus": service.gpus_per_actor} if service.gpus_per_actor > 0
                else {"num_cpus": service.cpus_per_actor})
        return ActorLayout(service.num_actors or 1, opts, worker_gpus)
    g, w = resources.gpus_per_worker, resources.num_workers
    if g > 1:
        raise ValueError(f"service.gpu_share ({share:g}) puts each K-means actor on a training worker's GPU, but "
                         f"resources.gpus_per_worker is {g:g}: a worker and its actor must share one GPU "
                         "(gpus_per_worker <= 1)")
    if g - share < RAY_GPU_STEP:
        raise ValueError(f"service.gpu_share ({share:g}) must be smaller than resources.gpus_per_worker ({g:g}): "
                         f"each worker asks Ray for gpus_per_worker - gpu_share of its GPU and its actor for "
                         f"gpu_share")
    n = service.num_actors or w
    if n > w:
        raise ValueError(f"service.num_actors ({n}) > resources.num_workers ({w}): with service.gpu_share each "
                         f"K-means actor takes the share of one training worker's GPU; at most {w} actors "
                         "(null: one per worker)")
    return ActorLayout(n, {"num_cpus": 0.0, "num_gpus": share}, round(g - share, 4), on_worker_gpus=True)
