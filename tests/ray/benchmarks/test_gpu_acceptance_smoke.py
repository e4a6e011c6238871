"""``benchmarks/gpu_acceptance.py --smoke``: the parts that measure (environment, training step, K-means,
augmentation) run at toy sizes on the CPU, so the GPU acceptance script cannot rot; the distributed K-means joins
the test session's Ray through ``RAY_ADDRESS``. The end-to-end part only chains the CLI commands that
tests/ray/runtime and tests/ray/cluster_configs run; its config overrides, for the CPU and the GPU, are validated
in tests/unit/benchmarks/test_gpu_acceptance_config.py."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_acceptance.py"
PARTS = ("environment", "train_step", "kmeans", "augment")


def test_gpu_acceptance_smoke_runs_the_measuring_parts(ray_session, tmp_path):
    out = tmp_path / "acceptance"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--smoke", "--work-dir", str(tmp_path / "work"),
                           "--parts", ",".join(PARTS)],
                          capture_output=True, text=True, timeout=280, check=False, env=env)
    report = json.loads((out / "gpu_acceptance.json").read_text())
    logs = {p.name: p.read_text()[-3000:] for p in (out / "logs").glob("*.log")}
    assert proc.returncode == 0, (proc.stdout[-3000:], {k: v.get("error") for k, v in report["parts"].items()}, logs)
    assert tuple(report["parts"]) == PARTS
    assert all(p["status"] == "ok" for p in report["parts"].values()), report["parts"]
    assert (out / "gpu_acceptance.txt").read_text().startswith("GPU acceptance (smoke")

    train = report["parts"]["train_step"]["results"]
    assert {r["amp_channels_last"] for r in train} == {False, True}
    assert all(r["hcsc"]["ms_per_step"] > 0 and r["hcsc_over_moco"] > 0 for r in train)

    km = report["parts"]["kmeans"]
    for backend in ("torch", "faiss_cpu", "distributed"):
        assert km[backend]["sizes"] == [30, 20, 10], (backend, km[backend])
        assert math.isfinite(km[backend]["objective_normalized"])
    # distributed Lloyd replays the torch backend's draws: the same clustering up to float sums
    assert abs(km["distributed"]["objective_rel_diff_vs_torch"]) < 1e-3

    aug = report["parts"]["augment"]
    assert aug["augment_on_cpu"]["cpu_stage_images_per_s_per_core"] > 0
    assert km["lloyd_iteration"]["argmin_agreement"] == 1.0  # the CPU scores in fp32 either way
    assert aug["views_mean_abs_diff"] < 0.05  # same per-row parameters on either side: only uint8 rounding differs

