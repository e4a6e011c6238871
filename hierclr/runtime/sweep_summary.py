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


SCOPES = ("last", "all", "avg", "last-5-avg", "last-10-avg")  # Tune's get_best_result(scope=...) names
TIE_RTOL = 1e-6  # two trials' scores this close (relative) are a tie


@dataclass
class TrialRow:
    """One trial as the summary shows it.

    ``status``: FINISHED (all epochs), STOPPED (ended early by the scheduler), FAILED (raised), UNFINISHED
    (the sweep was interrupted before the trial ended). ``score``: the trial's value of the sweep's metric by
    the sweep's scope (:func:`score_history`), None if no scored epoch has it; ``score_epoch``: the epoch it was
    read at (scope ``all``: the best epoch; otherwise the last epoch scored)."""

    trial_id: str
    params: dict[str, Any]
    status: str
    epochs: int
    score: float | None
    score_epoch: int | None = None
    mlflow_run_id: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, metric: str) -> dict[str, Any]:
        return {"trial": self.trial_id, "status": self.status, "params": self.params, metric: self.score,
                "score_epoch": self.score_epoch, "epochs": self.epochs, "mlflow_run_id": self.mlflow_run_id,
                "error": self.error}


def score_history(values: list[tuple[int, float]], mode: str, scope: str = "last",
                  warmup_epochs: int = 0) -> tuple[int | None, float | None]:
    """(epoch, score) of one trial's ``(epoch, value)`` history; (None, None) when nothing is left to score.

    Epochs below ``warmup_epochs`` and non-finite values (an epoch without the metric) are dropped first; then
    the scope is Tune's (``ResultGrid.get_best_result(scope=...)``): ``last`` the last value, ``all`` the best
    value by ``mode`` (its first epoch on a tie), ``avg`` the mean of all values, ``last-5-avg`` /
    ``last-10-avg`` the mean of the last 5 / 10."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    kept = sorted((e, v) for e, v in values if e >= warmup_epochs and v is not None and math.isfinite(v))
    if not kept:
        return None, None
    if scope == "last":
        return kept[-1]
    if scope == "all":
        pick = max if mode == "max" else min
        return pick(kept, key=lambda ev: ev[1])
    window = kept if scope == "avg" else kept[-int(scope.split("-")[1]):]
    return kept[-1][0], sum(v for _, v in window) / len(window)


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The trial with the best score among those that did not fail (ties: the first listed)."""
    ok = [r for r in rows if r.score is not None and r.status != "FAILED"]
    if not ok:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(ok, key=lambda r: sign * r.score)


def tied_with(rows: list[TrialRow], best: TrialRow | None) -> list[TrialRow]:
    """The other trials (not failed) whose score equals ``best``'s within :data:`TIE_RTOL`."""
    if best is None:
        return []
    return [r for r in rows if r.trial_id != best.trial_id and r.score is not None and r.status != "FAILED"
            and math.isclose(r.score, best.score, rel_tol=TIE_RTOL, abs_tol=1e-12)]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def table_text(rows: list[TrialRow], metric: str, params: list[str], scope: str = "last") -> str:
    """A fixed-width table: trial, each swept param, the score (header: metric and scope), epochs, status."""
    head = ["trial", *params, f"{metric} ({scope})", "epochs", "status"]
    body = [[r.trial_id, *(_fmt(r.params.get(p)) for p in params), _fmt(r.score), str(r.epochs), r.status]
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
    w.writerow(["trial", *params, metric, "score_epoch", "epochs", "status", "mlflow_run_id", "error"])
    for r in rows:
        w.writerow([r.trial_id, *(_fmt(r.params.get(p)) for p in params), "" if r.score is None else repr(r.score),
                    "" if r.score_epoch is None else r.score_epoch, r.epochs, r.status, r.mlflow_run_id or "",
                    error_line(r.error)[:300] if r.error else ""])
    return buf.getvalue()
