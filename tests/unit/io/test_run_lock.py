"""One process writes a run: the run lock against real processes (held, refused, killed, taken over), and the
run directories two starts in one second get (distinct, each resumable by name and by ``latest``)."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hierclr.config.pretrain import load_config
from hierclr.io.checkpoint import TrainingState, latest_run, save_checkpoint
from hierclr.io.run_lock import LOCK_NAME, RunLock, RunLockedError
from hierclr.runtime.runs import remove_if_empty, resolve_run

HOLDER = """
import sys, time
from hierclr.io.run_lock import RunLock
lock = RunLock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run's lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _ckpt(run_dir: Path, epoch: int) -> None:
    save_checkpoint(run_dir / f"checkpoint_{epoch:06d}", TrainingState(
        epoch=epoch, model={"w": torch.zeros(2)}, optimizer={"state": {}}))


def test_a_held_run_is_refused_naming_its_owner_and_taken_over_after_a_kill(tmp_path, caplog):
    run = tmp_path / "demo-20260101-000000"
    holder = _hold(run)
    try:
        with pytest.raises(RunLockedError) as e:
            RunLock.acquire(run)
        msg = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg and str(run / LOCK_NAME) in msg
        assert "two processes must not train one run" in msg
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no clean-up ran in the holder
        holder.wait()
    assert (run / LOCK_NAME).read_text()  # the dead owner's record is still in the file...
    with caplog.at_level(logging.WARNING, logger="hierclr.io.run_lock"):
        lock = RunLock.acquire(run)  # ...but its flock died with it: the lock is taken over
    assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert f'"pid": {os.getpid()}' in (run / LOCK_NAME).read_text()
    lock.release()
    again = RunLock.acquire(run)  # a cleanly released lock is free without a warning
    again.release()


def test_resume_latest_of_a_run_in_use_is_refused_before_it_reads_anything(tmp_path):
    cfg = load_config("demo", [f"checkpoint.storage_path={tmp_path}"])
    run = tmp_path / "demo-20260101-000000"
    _ckpt(run, 0)
    holder = _hold(run)
    try:
        for resume in ("latest", "demo-20260101-000000"):
            with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
                resolve_run(cfg, str(tmp_path), resume)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    where = resolve_run(cfg, str(tmp_path), "latest")
    assert where.name == run.name and not where.fresh and where.checkpoint.endswith("checkpoint_000000")
    where.lock.release()


def test_runs_started_in_one_second_get_distinct_resumable_names(tmp_path, monkeypatch):
    cfg = load_config("demo", [f"checkpoint.storage_path={tmp_path}"])
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")  # the same second, for sure
    runs = [resolve_run(cfg, str(tmp_path), None) for _ in range(11)]
    names = [r.name for r in runs]
    assert names[:3] == ["demo-20260101-000000", "demo-20260101-000000-2", "demo-20260101-000000-3"]
    assert len(set(names)) == 11 and all(r.fresh and (tmp_path / r.name).is_dir() for r in runs)
    for r in runs:
        r.lock.release()
    for r in runs[:10]:
        _ckpt(tmp_path / r.name, 0)
    # --resume latest picks the newest by number (-10 after -9), not by text, and only runs it can match
    assert latest_run(tmp_path, "demo") == "demo-20260101-000000-10"
    # and every run is resumable by its own name
    where = resolve_run(cfg, str(tmp_path), "demo-20260101-000000-2")
    assert where.name == "demo-20260101-000000-2" and where.checkpoint.startswith(str(tmp_path / where.name))
    where.lock.release()


def test_a_failed_fresh_run_without_a_checkpoint_leaves_no_directory(tmp_path):
    cfg = load_config("demo", [f"checkpoint.storage_path={tmp_path}"])
    empty = resolve_run(cfg, str(tmp_path), None)
    (tmp_path / empty.name / "checkpoint_manager_snapshot.json").write_text("{}")  # what Ray leaves there
    assert remove_if_empty(str(tmp_path), empty) and not (tmp_path / empty.name).exists()
    empty.lock.release()
    kept = resolve_run(cfg, str(tmp_path), None)
    _ckpt(tmp_path / kept.name, 0)
    assert not remove_if_empty(str(tmp_path), kept) and (tmp_path / kept.name).is_dir()  # resumable: kept
    kept.lock.release()
    resumed = resolve_run(cfg, str(tmp_path), "latest")
    assert not remove_if_empty(str(tmp_path), resumed)  # a resumed run's directory is never removed
    resumed.lock.release()


def test_an_unwritable_storage_path_fails_before_anything_starts(tmp_path):
    """A clear ValueError (the CLI's one line, exit 2) from the first thing a run does, before Ray or MLflow."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for root in (blocker / "runs", blocker):  # below a file; a file itself
        cfg = load_config("demo", [f"checkpoint.storage_path={root}"])
        with pytest.raises(ValueError, match=rf"checkpoint.storage_path {root} is not writable: .*no run was started"):
            resolve_run(cfg, str(root), None)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() != 0:  # root writes into read-only directories
        cfg = load_config("demo", [f"checkpoint.storage_path={ro}"])
        with pytest.raises(ValueError, match="Permission denied"):
            resolve_run(cfg, str(ro), None)
