"""The worker's side of the service: submit this rank's shard as an object ref, get the epoch's prototypes."""
from __future__ import annotations

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
from torch import Tensor

from hierclr.clustering.prototypes import Prototypes
from hierclr.service.errors import ClusteringFailedError, error_cause
from hierclr.service.stats import EStepStats


class ClusteringClient:
    """Worker-side handle: :meth:`estep` submits this rank's shard and returns the epoch's prototypes."""

    def __init__(self, coordinator) -> None:
        self._coordinator = coordinator

    def estep(
        self,
        epoch: int,
        rank: int,
        world_size: int,
        ids: Tensor,
        features: Tensor,
        device: torch.device | str | None = None,
        timeout_s: float | None = None,
    ) -> tuple[Prototypes, EStepStats]:
        """Submit this rank's ``ids (n,)`` int64 and ``features (n, d)`` float32, wait for all
        ``world_size`` ranks and the clustering, return ``(prototypes on device, stats)``.

        Every rank must call it for the epoch (it is a barrier). The shard goes into the object store
        once, owned by this worker, and only its ref travels. Raises :class:`ClusteringFailedError`
        when the E-step failed twice, ValueError for bad input (e.g. an id submitted by two ranks).
        """
        ids_np, feats_np = _shard_arrays(ids, features)
        shard_ref = ray.put((ids_np, feats_np))
        try:
            [protos_ref], stats = ray.get(
                self._coordinator.submit.remote(int(epoch), int(rank), int(world_size), [shard_ref], _node_id()),
                timeout=timeout_s,
            )
            protos = ray.get(protos_ref, timeout=timeout_s)
        except RayTaskError as e:
            if isinstance(e.cause, (ClusteringFailedError, ValueError)):
                raise e.cause from e
            raise ClusteringFailedError(f"E-step of epoch {epoch}: the clustering coordinator failed: "
                                        f"{error_cause(e)}", epoch) from e
        except GetTimeoutError as e:
            raise TimeoutError(f"estep: epoch {epoch} rank {rank}/{world_size} got no prototypes within "
                               f"{timeout_s} s (is every rank calling estep?)") from e
        except RayError as e:  # the coordinator died for good, or its result was lost (OOM, node)
            raise ClusteringFailedError(f"E-step of epoch {epoch}: the clustering service was lost: {error_cause(e)}",
                                        epoch) from e
        return (protos.to(device) if device is not None else protos), stats


def connect(name: str, namespace: str | None = None) -> ClusteringClient:
    """The client of the running service ``name`` (from a Ray Train worker of the same job)."""
    try:
        return ClusteringClient(ray.get_actor(name, namespace=namespace))
    except ValueError as e:
        raise ValueError(f"no clustering service named {name!r} is running (start it with "
                         f"ClusteringService.start on the driver)") from e


def _node_id() -> str | None:
    """This process's Ray node: the coordinator starts this rank's K-means actor there when they share GPUs."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _shard_arrays(ids: Tensor, features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    ids_np = np.ascontiguousarray(torch.as_tensor(ids).detach().cpu().numpy())
    feats_np = np.ascontiguousarray(torch.as_tensor(features).detach().cpu().numpy())
    if ids_np.ndim != 1 or not np.issubdtype(ids_np.dtype, np.integer):
        raise ValueError(f"estep: ids must be a 1-D integer tensor, got {ids_np.dtype} {ids_np.shape}")
    if feats_np.ndim != 2 or feats_np.shape[0] != ids_np.shape[0]:
        raise ValueError(f"estep: features must be (n, d) with n = len(ids) = {ids_np.shape[0]}, "
                         f"got {feats_np.shape}")
    if not np.issubdtype(feats_np.dtype, np.floating):
        raise ValueError(f"estep: features must be floating point, got {feats_np.dtype}")
    if not np.isfinite(feats_np).all():
        raise ValueError("estep: features contain NaN or inf values")
    return ids_np.astype(np.int64, copy=False), feats_np.astype(np.float32, copy=False)
