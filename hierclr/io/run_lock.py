"""One process writes a run: a lock file in the run directory, held for the whole run.

Measured problem (issue 18): two ``--resume latest`` at once trained the same epoch twice (79 duplicated
(metric, step) rows in MLflow, two epoch-2 checkpoints). :class:`RunLock` takes ``<run_dir>/.hierclr.lock`` with
``fcntl.flock`` and writes its owner into it (pid, host, start time, command). A second process is refused with
:class:`RunLockedError` naming that owner. The kernel drops a flock when its process ends however it ends
(kill -9 included), so a lock file left by a dead run is simply taken over (with a warning naming the old
owner); there is no age or pid guessing. The lock file itself stays (it is tiny and harmless); only the flock
on it matters.

flock is per host: a run directory on a network filesystem shared by several machines is protected only where
the filesystem honours flock (NFSv4 and Lustre do; object stores have no locks, and ``s3://`` / ``gs://`` run
directories are not locked at all).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".hierclr.lock"

log = logging.getLogger(__name__)


class RunLockedError(ValueError):
    """Another live process holds the run; the message names it."""


class RunLock:
    """The held lock of one run directory; :meth:`release` (or the process ending) frees it."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir, self._fd = run_dir, fd

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> RunLock:
        """Take the lock of ``run_dir`` (created if missing) or raise :class:`RunLockedError`."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise RunLockedError(
                f"run {run_dir} is being written by another process ({describe(owner)}; lock file {path}): "
                "two processes must not train one run. Wait for it to end, or stop it, then retry") from None
        except BaseException:
            os.close(fd)
            raise
        previous = _read_owner(fd)
        if previous:
            log.warning("taking over the lock of run %s from %s, which is no longer running", run_dir,
                        describe(previous))
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # nobody to take over from
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read_owner(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {"unreadable": True}


def describe(owner: dict) -> str:
    if not owner or owner.get("unreadable"):
        return "owner unknown"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}: {owner.get('command')}"
