"""Cooperative early stopping for sweeps: the scheduler's STOP becomes a request the trial honours itself.

Tune stops a trial by ending its actor. A trial here is a whole Ray Train run whose controller, workers,
data streams and clustering actors belong to that actor; ended from outside, the run writes no final
artifacts, leaves its MLflow run open, and (Ray 2.60, measured) its Train worker group's placement group
is never removed when the cluster has no dashboard, because Train's placement-group cleaner asks the State
API whether the controller is alive: the next trial then waited forever for those CPUs.

So :class:`CooperativeASHA` asks ASHA as usual but answers CONTINUE to Tune, posting its real decision for
(trial, epochs_done) on a :class:`StopBoard` actor. After each epoch's report the trial's rank-0 worker reads
the decision (:func:`await_decision`) and, on STOP, all ranks end the run at that epoch boundary like a
finished run: last checkpoint, final artifacts, resources released. The trial's last epoch is never stopped
(ASHA's ``stop_last_trials=False``): a trial that reaches ``max_t`` ends by itself.
"""
from __future__ import annotations

import hashlib
import logging
import time

import ray
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from hierclr.runtime.ray_start import OWN_RESOURCES

log = logging.getLogger(__name__)


def board_name(key: str) -> str:
    """A stable actor name per sweep (a resumed sweep driver finds the same board)."""
    return "hierclr-stopboard-" + hashlib.sha1(key.encode()).hexdigest()[:12]


@ray.remote(num_cpus=0)
class StopBoard:
    """Decisions per (trial id, epochs done): True = stop there, False = continue."""

    def __init__(self) -> None:
        self._decisions: dict[str, dict[int, bool]] = {}

    def decide(self, trial_id: str, epochs_done: int, stop: bool) -> None:
        self._decisions.setdefault(trial_id, {})[int(epochs_done)] = bool(stop)

    def decision(self, trial_id: str, epochs_done: int) -> bool | None:
        return self._decisions.get(trial_id, {}).get(int(epochs_done))

    def stopped(self) -> list[str]:
        return sorted(t for t, d in self._decisions.items() if any(d.values()))


_HANDLES: dict[str, object] = {}  # per process: a board lives while its creator's handle does (Ray GCs actors)


def get_board(name: str):
    """The named board, created on first use (the sweep driver) and found by name elsewhere. The handle is
    kept for the life of this process: Ray ends a non-detached actor once its creator's handles are gone."""
    handle = _HANDLES.get(name)
    if handle is None:
        handle = _HANDLES[name] = StopBoard.options(name=name, get_if_exists=True, lifetime=None,
                                                       scheduling_strategy=OWN_RESOURCES).remote()
    return handle


def close_board(name: str) -> None:
    """End the board (the sweep driver, when the sweep is over)."""
    handle = _HANDLES.pop(name, None)
    if handle is not None:
        ray.kill(handle)


class CooperativeASHA(ASHAScheduler):
    """ASHA whose STOP is delivered through the :class:`StopBoard` (see the module docstring)."""

    def __init__(self, *, board: str, **kwargs) -> None:
        super().__init__(stop_last_trials=False, **kwargs)
        self._board_name = board
        self._asked_to_stop: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        t = result.get(self._time_attr)
        if t is None:
            return TrialScheduler.CONTINUE
        if trial.trial_id in self._asked_to_stop:
            stop = True  # repeated report of the stopping epoch (its checkpoint), or late results
        else:
            stop = super().on_trial_result(tune_controller, trial, result) == TrialScheduler.STOP
        if stop:
            self._asked_to_stop.add(trial.trial_id)
        get_board(self._board_name).decide.remote(trial.trial_id, int(t), stop)
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return super().debug_string() + f"\nasked to stop: {sorted(self._asked_to_stop)}"


def await_decision(name: str, trial_id: str, epochs_done: int, *, timeout_s: float = 60.0) -> bool:
    """Rank 0 after reporting: whether the sweep asked this trial to stop after ``epochs_done`` epochs.
    Waits for the decision (Tune receives the report asynchronously, usually within a second); after
    ``timeout_s`` without one, the trial continues with a warning."""
    board = get_board(name)
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        decision = ray.get(board.decision.remote(trial_id, epochs_done))
        if decision is not None:
            return decision
        if time.monotonic() > deadline:
            log.warning("no early-stopping decision for trial %s after %d epochs within %.0f s; continuing",
                        trial_id, epochs_done, timeout_s)
            return False
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
