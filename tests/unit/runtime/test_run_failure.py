"""What a failed run says: the cause that actually failed (inside Ray Train's wrappers), and how to continue."""
from __future__ import annotations

import argparse
import pickle

from ray.exceptions import RayTaskError
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from hierclr.commands.common import resume_command
from hierclr.runtime.divergence import TrainingDivergedError
from hierclr.runtime.driver import RunFailedError, failure_cause


def _remote(err: Exception) -> Exception:
    """``err`` as a Ray worker's failure reaches the driver: a RayTaskError carrying it, with the traceback text."""
    try:
        raise err
    except type(err) as e:
        return RayTaskError("train_fn", f"Traceback (most recent call last):\n  File \"w.py\"\n{e!r}", e) \
            .as_instanceof_cause()


def test_the_cause_is_the_first_failing_workers_own_error():
    diverged = TrainingDivergedError("training diverged: non-finite loss at epoch 2, step 7 (rank 1), lr 1e+06")
    err = WorkerGroupError("rank 1 failed ... long traceback ...", {1: _remote(diverged), 3: _remote(OSError("x"))})
    assert failure_cause(err) == ("TrainingDivergedError: training diverged: non-finite loss at epoch 2, step 7 "
                                  "(rank 1), lr 1e+06")
    assert failure_cause(ControllerError(RuntimeError("placement group timed out"))) == \
        "RuntimeError: placement group timed out"
    assert failure_cause(OSError(28, "No space left on device")) == "OSError: [Errno 28] No space left on device"
    assert failure_cause(RuntimeError("x" * 5000)).endswith("...") and len(failure_cause(RuntimeError("x" * 5000))) < 1600


def test_run_failed_error_names_the_checkpoint_to_resume_and_survives_pickling():
    err = RunFailedError("pretrain", "InjectedFault: boom", "demo-20260101-000000-2", "/runs/demo-20260101-000000-2",
                         "/runs/demo-20260101-000000-2/checkpoint_000001", 1)
    assert "run demo-20260101-000000-2 failed: InjectedFault: boom" in str(err)
    assert "epoch 1's (/runs/demo-20260101-000000-2/checkpoint_000001)" in str(err)
    assert "--resume demo-20260101-000000-2" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.epoch == 1
    none = RunFailedError("finetune", "ValueError: x", "r", "/runs/r", None, None)
    assert "wrote no checkpoint" in str(none) and "--resume" not in str(none)


def test_the_resume_command_repeats_the_command_line_with_the_run_name():
    args = argparse.Namespace(command="pretrain", argv=["-v", "pretrain", "--config", "my run.yaml", "--set",
                                                        "optim.epochs=10", "--resume", "latest",
                                                        "--stop-after-epoch", "5"])
    assert resume_command(args, "demo-20260101-000000-2") == (
        "hierclr pretrain --config 'my run.yaml' --set optim.epochs=10 --stop-after-epoch 5 "
        "--resume demo-20260101-000000-2")
    pipeline = argparse.Namespace(command="hcal", argv=["hcal", "--resume=/x/checkpoint_000003"])
    assert resume_command(pipeline, "digits-hcal-20260101-000000") == \
        "hierclr hcal --resume digits-hcal-20260101-000000"


def test_bad_images_met_by_both_streams_are_reported_once():
    from types import SimpleNamespace

    from hierclr.data.bad_images import BadImage
    from hierclr.runtime.driver import unique_bad_images

    a, b, c = BadImage(3, "s0", "truncated"), BadImage(9, "s1", "truncated"), BadImage(1, "s0", "not an image")
    streams = {"train": SimpleNamespace(bad_images=lambda: [b, a]), "embed": SimpleNamespace(bad_images=lambda: [a, c]),
               "val": SimpleNamespace(bad_images=lambda: [BadImage(3, "val0", "x")])}  # another split's id 3
    assert unique_bad_images(streams) == [c, a, b]
