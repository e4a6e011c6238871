"""The end-of-sweep summary: one row per trial, the best trial, and the table as text and CSV.

Pure Python over plain values (what :mod:`hierclr.runtime.sweep` extracts from Tune's results), so it is
testable without Ray.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("FINISHED", "STOPPED", "FAILED", "UNFINISHED")


@dataclass
class TrialRow:
    """One trial as the summary shows it.

    ``status``: FINISHED (all epochs), STOPPED (ended early by the scheduler), FAILED (raised), UNFINISHED
    (the sweep was interrupted before the trial ended). ``best``: the best value of the sweep's metric over
    the trial's epochs (by the sweep's mode), None if it was never reported."""

    trial_id: str
    params: dict[str, Any]
    status: str
    epochs: int
    best: float | None
    best_epoch: int | None = None
    mlflow_run_id: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, metric: str) -> dict[str, Any]:
        return {"trial": self.trial_id, "status": self.status, "params": self.params, metric: self.best,
                "best_epoch": self.best_epoch, "epochs": self.epochs, "mlflow_run_id": self.mlflow_run_id,
                "error": self.error}


def best_of(values: list[tuple[int, float]], mode: str) -> tuple[int | None, float | None]:
    """(epoch, value) of the best finite value by ``mode``; (None, None) when there is none."""
    finite = [(e, v) for e, v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    pick = max if mode == "max" else min
    return pick(finite, key=lambda ev: ev[1])


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The trial with the best metric among those that did not fail (ties: the first listed)."""
    ok = [r for r in rows if r.best is not None and r.status != "FAILED"]
    if not ok:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(ok, key=lambda r: sign * r.best)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def table_text(rows: list[TrialRow], metric: str, params: list[str]) -> str:
    """A fixed-width table: trial, each swept param, the best metric, epochs, status."""
    head = ["trial", *params, f"best {metric}", "epochs", "status"]
    body = [[r.trial_id, *(_fmt(r.params.get(p)) for p in params), _fmt(r.best), str(r.epochs), r.status]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def clip_error(text: str, limit: int = 2000) -> str:
    """A trial's error text within ``limit`` characters, keeping its start and its end: a Ray traceback puts the
    cause (the exception's message) last."""
    return text if len(text) <= limit else f"{text[: limit // 4]}\n...\n{text[-(limit - limit // 4 - 5):]}"


def error_line(text: str) -> str:
    """The line of an error text that says what went wrong: the last non-empty one (the exception's message)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def table_csv(rows: list[TrialRow], metric: str, params: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", *params, metric, "best_epoch", "epochs", "status", "mlflow_run_id", "error"])
    for r in rows:
        w.writerow([r.trial_id, *(_fmt(r.params.get(p)) for p in params), "" if r.best is None else repr(r.best),
                    "" if r.best_epoch is None else r.best_epoch, r.epochs, r.status, r.mlflow_run_id or "",
                    error_line(r.error)[:300] if r.error else ""])
    return buf.getvalue()
