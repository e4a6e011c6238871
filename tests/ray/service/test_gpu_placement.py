"""``service.gpu_share`` on Ray's real scheduler: a local Ray with 8 logical GPUs (in a process of its own, so
the session's Ray is not disturbed; ``tests/helpers/gpu_placement.py``) places the ImageNet preset's 8 Train
workers and its K-means actors on one 8-GPU node, refuses a run that cannot fit before scheduling anything,
and an actor start with no room fails within its timeout instead of waiting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(__file__).resolve().parents[2] / "helpers" / "gpu_placement.py"


def test_workers_and_actors_share_eight_gpus_and_nothing_waits_forever():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray, never the session's
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[2]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(SCRIPT)], check=False, capture_output=True, text=True, timeout=100,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    shipped = out["preset"]  # imagenet-r50-200ep: 8 workers at 0.9 GPU, one faiss actor at 0.1 of a training GPU
    assert shipped["workers_placed"] and shipped["worker_gpus"] == 0.9
    assert shipped["actor_options"] == {"num_cpus": 0.0, "num_gpus": 0.1} and len(shipped["actor_gpu_ids"]) == 1
    assert shipped["gpus_free"] == pytest.approx(0.7)  # the 7 other GPUs' shares stay free
    per_gpu = out["per_gpu"]  # 4 workers, num_actors null: one actor on each of their GPUs, 4 GPUs idle
    assert per_gpu["workers_placed"] and len(set(per_gpu["actor_gpu_ids"])) == 4  # one actor per GPU
    assert per_gpu["other_gpus_whole"]  # ... in what its worker left, not on an idle GPU
    # a fractional actor sees its own GPU (as cuda:0 in its process)
    assert per_gpu["cuda_visible"] == [str(i) for i in per_gpu["actor_gpu_ids"]]
    assert per_gpu["gpus_free"] == pytest.approx(4.0)

    assert out["refused"].startswith("the run needs 14.5 GPU (cluster has 8)")  # 16 workers x 0.9 + 0.1
    assert out["no_room"].startswith("E-step of epoch 20: 4 of 4 K-means actors ({'num_cpus': 0.0, 'num_gpus': 0.1} "
                                     "each, pinned to the training workers' nodes to share their GPUs) did not start "
                                     "within 0.5 s; the cluster has 0 GPU")
    assert out["no_room_seconds"] < 10 and out["gpus_free_after"] == pytest.approx(8.0)

    # why the coordinator starts the actors only once the workers hold their GPUs: started first, they pack onto
    # GPU 0, and the eighth 0.9-GPU worker never fits (Ray Train would wait for it forever)
    assert out["early_actor_gpu_ids"] == [0, 0] and out["workers_after_early_actors_placed"] is False
