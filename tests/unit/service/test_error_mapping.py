"""Every way the E-step can fail reaches the workers as ClusteringFailedError naming the epoch and the cause: the
coordinator's retry logic and the client's mapping on plain objects (no Ray cluster: the failures are Ray's own
exception types, raised where Ray would raise them)."""
from __future__ import annotations

import pytest
import torch
from ray.exceptions import ActorDiedError, OutOfMemoryError, RayTaskError

from hierclr.service import client as client_module
from hierclr.service.client import ClusteringClient
from hierclr.service.coordinator import EStepCoordinator
from hierclr.service.errors import ClusteringFailedError
from hierclr.service.pool import not_ready_message
from hierclr.service.stats import EStepStats

OOM = "Task was killed due to the node running low on memory."


def _coordinator(failures: list) -> tuple[EStepCoordinator, list[int]]:
    """A coordinator whose attempts raise ``failures`` in turn, then succeed; returns it and the attempts made."""
    coord = EStepCoordinator([], job=None, max_restarts=1)
    calls: list[int] = []

    def attempt(epoch, refs, n):
        calls.append(n)
        if failures:
            raise failures.pop(0)
        return "protos-ref", EStepStats(epoch=epoch, num_rows=1, num_clustered=1, num_missing=0, num_actors=1,
                                        attempts=n, gather_s=0.0, cluster_s=0.0, total_s=0.0, levels=[])

    coord._attempt = attempt
    coord._wait_for_actors = lambda: None
    return coord, calls


def test_an_oom_killed_actor_is_retried_like_a_dead_one():
    """Ray's OOM killer raises OutOfMemoryError, not a RayActorError: it used to escape the retry."""
    coord, calls = _coordinator([OutOfMemoryError(OOM)])
    [ref], stats = coord._estep(4, ["r0"], submitted_at=0.0)
    assert ref == "protos-ref" and calls == [1, 2] and stats.attempts == 2


def test_a_second_loss_fails_naming_the_epoch_and_both_causes():
    coord, calls = _coordinator([ActorDiedError(), OutOfMemoryError(OOM)])
    with pytest.raises(ClusteringFailedError) as e:
        coord._estep(7, ["r0"], submitted_at=0.0)
    assert e.value.epoch == 7 and calls == [1, 2]
    msg = str(e.value)
    assert msg.startswith("E-step of epoch 7 failed twice: first K-means actor ? died (ActorDiedError: ")
    assert f"on the retry, K-means actor ? was lost (OutOfMemoryError: {OOM})" in msg


def test_an_error_inside_kmeans_fails_at_once_with_its_cause():
    inner = RuntimeError("faiss: out of GPU memory")
    try:
        raise inner
    except RuntimeError as x:
        err = RayTaskError("KMeansActor.cluster", "Traceback ...", x)
    coord, calls = _coordinator([err])
    with pytest.raises(ClusteringFailedError, match=r"E-step of epoch 2: K-means failed on an actor: "
                                                    r"RuntimeError: faiss: out of GPU memory"):
        coord._estep(2, ["r0"], submitted_at=0.0)
    assert calls == [1]  # not retried: the same input would fail the same way


class _Handle:
    """A stand-in for the coordinator's actor handle: ``submit.remote(...)`` returns what ``ray.get`` raises."""

    def __init__(self, error: Exception) -> None:
        self.submit = self
        self.error = error

    def remote(self, *args):
        return self.error


@pytest.mark.parametrize(("error", "cause"), [
    (ActorDiedError(), "the clustering service was lost: ActorDiedError: The actor died unexpectedly"),
    (OutOfMemoryError(OOM), f"the clustering service was lost: OutOfMemoryError: {OOM}"),
])
def test_the_client_turns_a_lost_service_into_clustering_failed(monkeypatch, error, cause):
    def get(x, timeout=None):
        raise x

    monkeypatch.setattr(client_module.ray, "put", lambda obj: obj)
    monkeypatch.setattr(client_module.ray, "get", get)
    with pytest.raises(ClusteringFailedError) as e:
        ClusteringClient(_Handle(error)).estep(3, 0, 2, torch.arange(4), torch.randn(4, 8))
    assert str(e.value).startswith(f"E-step of epoch 3: {cause}") and e.value.epoch == 3


def test_a_slow_start_is_not_blamed_on_free_resources():
    msg = not_ready_message("svc", 1, 2, 120, {"num_cpus": 1}, {"CPU": 3.0})
    assert "did not answer within 120 s, though the cluster has 3 CPU and 0 GPU unreserved" in msg
    assert "not a shortage of resources" in msg
    short = not_ready_message("svc", 2, 3, 120, {"num_gpus": 1, "num_cpus": 0}, {"CPU": 3.0, "GPU": 1.0})
    assert "they need 0 CPU and 2 GPU" in short and "not a shortage" not in short
