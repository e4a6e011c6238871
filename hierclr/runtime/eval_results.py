"""``results.json`` of ``hierclr evaluate``, kept current while the protocols run.

After every protocol the file is rewritten atomically and the protocol's numbers go to the evaluation's MLflow run
at once, so a protocol that fails later (a linear probe after minutes of features, kNN and clustering) keeps what
the earlier ones measured (issue 19: a failed linear probe used to leave no ``results.json`` and MLflow runs with no
metrics and no reason). ``status`` says whether the file is complete: ``running``, ``finished`` or ``failed`` (then
``error`` names the protocol and the cause, also the run's ``hierclr.error`` tag); ``done`` lists the finished
steps in order (``features``, then the protocols: ``knn``, ``clustering/kmeans``, ``linear``, ``semi0.1``, ...).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from hierclr.io.atomic import write_atomic


class EvaluationRecord:
    """The evaluation's results as they accrue: ``header`` (source, data, protocols, run ids) + results so far."""

    def __init__(self, path: str | Path, header: Mapping, tracker) -> None:
        self.path, self.header, self.tracker = Path(path), dict(header), tracker
        self.results: dict[str, float] = {}
        self.done: list[str] = []
        self.status, self.error = "running", None
        self._write()

    def add(self, protocol: str, scores: Mapping[str, float]) -> None:
        """``protocol`` finished with ``scores``: written to results.json and logged to MLflow (step 0) now."""
        self.results.update(scores)
        self.done.append(protocol)
        self._write()
        self.tracker.log_metrics(0, scores)

    def fail(self, protocol: str | None, cause: str) -> None:
        """The evaluation stopped in ``protocol`` (None: before any) with ``cause``; earlier results stay."""
        self.status, self.error = "failed", {"protocol": protocol, "cause": cause}
        self._write()
        self.tracker.set_tags({"hierclr.error": f"{protocol}: {cause}" if protocol else cause})

    def finish(self) -> dict:
        """Every protocol done: the final payload (also written)."""
        self.status = "finished"
        self._write()
        return self.payload()

    def payload(self) -> dict:
        out = {**self.header, "status": self.status, "done": list(self.done), "results": dict(self.results)}
        if self.error is not None:
            out["error"] = self.error
        return out

    def _write(self) -> None:
        write_atomic(self.path, json.dumps(self.payload(), indent=2).encode())
