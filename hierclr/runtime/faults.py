"""Fault injection for the end-to-end tests, read in one place: nothing in a production signature.

A test that wants a worker or a K-means actor to fail writes a *fault plan* (a JSON list) to the file that
``$HIERCLR_FAULT_PLAN`` names; production code calls :func:`trigger` at a few named points. Without the
variable (every real run) ``trigger`` is one ``os.environ`` lookup. The variable must be set before Ray
starts, so that every Ray worker process inherits it (the test session's Ray fixture does so); the plan file
itself can change between tests.

A fault: ``{"point": "train_step" | "kmeans_actor", "times": 1, "action": "raise" | "exit", <where>...}``
where the other keys must all equal the keyword arguments of the ``trigger`` call (``epoch``, ``rank``,
``step`` for ``train_step``; ``actor``, ``method`` for ``kmeans_actor``, and ``epoch`` for its ``cluster`` and
``build``). Each fault fires ``times`` times in all, counted across processes and restarts with marker files
next to the plan (``<plan>.<index>.<n>``).
``raise`` raises :class:`InjectedFault`; ``exit`` ends the process at once (``os._exit(1)``), as a crash would.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

PLAN_ENV = "HIERCLR_FAULT_PLAN"
POINTS = ("train_step", "kmeans_actor")

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised by a ``raise`` fault of the plan."""


def trigger(point: str, **where) -> None:
    """Fire the first unspent fault of the plan at ``point`` whose keys all match ``where``; else nothing."""
    path = os.environ.get(PLAN_ENV)
    if not path:
        return
    plan_file = Path(path)
    try:
        plan = json.loads(plan_file.read_text())
    except FileNotFoundError:
        return
    for index, fault in enumerate(plan):
        if fault.get("point") != point:
            continue
        keys = {k: v for k, v in fault.items() if k not in ("point", "times", "action")}
        if any(where.get(k) != v for k, v in keys.items()):
            continue
        for n in range(int(fault.get("times", 1))):
            marker = plan_file.with_name(f"{plan_file.name}.{index}.{n}")
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # one process wins each firing
            except FileExistsError:
                continue
            os.write(fd, f"pid {os.getpid()} {where}\n".encode())
            os.close(fd)
            what = f"injected fault at {point} {where}"
            if fault.get("action", "raise") == "exit":
                log.warning("%s: exiting the process", what)
                os._exit(1)
            raise InjectedFault(what)


def write_plan(path: str | os.PathLike, faults: list[dict]) -> None:
    """Replace the plan at ``path`` (tests), clearing the markers of the previous plan."""
    path = Path(path)
    for marker in path.parent.glob(f"{path.name}.*"):
        marker.unlink()
    for fault in faults:
        if fault.get("point") not in POINTS:
            raise ValueError(f"fault plan: point must be one of {POINTS}, got {fault.get('point')!r}")
    path.write_text(json.dumps(faults))
