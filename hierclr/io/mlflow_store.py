"""Where an MLflow store is and how to talk to it, for every reader and writer of runs (the tracker, the
model loader, export): absolute local store URIs, bounded HTTP retries, a scoped global tracking URI.
No Ray; MLflow imported where used."""
from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

COMMAND_ENV = "HIERCLR_COMMAND"  # the CLI's command line, for the runs it makes (tag hierclr.command)

SQLITE = "sqlite:///"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the embedded local store in the working directory
_NAMED_STORES = ("databricks", "databricks-uc", "uc")  # tracking URIs without a scheme that are not paths


def resolved_uri(cfg) -> str:
    """The tracking URI (of a ``tracking`` config section, or a URI) with a relative local store (``sqlite:///x.db``, ``file:x``, a plain path) made absolute.

    Call it on the driver and hand the result to the workers: Ray Train workers run in another working
    directory, where a relative store would be a different, empty one. Server URIs are returned unchanged.
    (MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``; sqlite is the local default.)
    """
    uri = cfg if isinstance(cfg, str) else cfg.uri  # a tracking section or a URI
    if uri.startswith(SQLITE):
        path, sep, query = uri[len(SQLITE):].partition("?")
        if path in ("", ":memory:"):
            return uri
        return f"{SQLITE}{Path(path).expanduser().resolve().as_posix()}{sep}{query}"
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        if parts.netloc or parts.path.startswith("/"):
            return uri
        return Path(parts.path).expanduser().resolve().as_uri()
    if uri and uri not in _NAMED_STORES and not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", uri):  # a local directory
        return Path(uri).expanduser().resolve().as_uri()
    return uri


# MLflow's own default is 7 retries with backoff factor 2 and a 120 s timeout: a server that dies mid-run froze
# rank 0 (and with it every worker at the next all-reduce) for about 4 minutes before the call failed.
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
RUN_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


@contextmanager
def http_settings(settings: Mapping[str, str], *, override: bool) -> Iterator[None]:
    """MLflow REST retry/timeout settings inside the block, the environment restored afterwards (MLflow reads
    these variables on every request). ``override`` False keeps values the user set."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update({k: v for k, v in settings.items() if override or saved[k] is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow.set_tracking_uri(uri)`` inside the block, the previous setting (and env var) afterwards."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils  # the unresolved global setting

    previous = tracking_utils._tracking_uri
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a local sqlite store: hold an exclusive ``flock`` on ``<database>.lock`` inside the block; other URIs:
    nothing. MLflow creates and migrates a sqlite database's tables on the first connection, and a run creates its
    experiment when it is missing; two processes doing either at once failed (issue 18: ``table trace_info
    already exists``, ``Online migration expected to match one row``, and then MLflow off for the whole run), so
    the tracker connects and creates experiments under this lock. Held for a second or two at a run's start."""
    if not uri.startswith(SQLITE):
        yield
        return
    path = uri[len(SQLITE):].partition("?")[0]
    if path in ("", ":memory:"):
        yield
        return
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
