"""The clustering service's error, kept intact when Ray ships it to the waiting workers."""
from __future__ import annotations


class ClusteringFailedError(RuntimeError):
    """The E-step of ``epoch`` could not be computed: a K-means actor failed twice (or died for good)."""

    def __init__(self, message: str, epoch: int | None = None, actor: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.actor = actor

    def __reduce__(self):  # keep epoch/actor when Ray ships the error to the workers
        return type(self), (str(self), self.epoch, self.actor)


def error_cause(e: BaseException) -> str:
    """``Type: first line`` of an error; for a Ray task error, of the exception raised inside the task."""
    from ray.exceptions import RayTaskError

    if isinstance(e, RayTaskError) and e.cause is not None:
        e = e.cause
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
