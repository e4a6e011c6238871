"""Shared fixtures: seeded RNG, small planted-hierarchy data, the real-data location."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# One intra-op thread: on the 2-core CI machine, with Ray workers beside the test process, two threads made
# train-mode BatchNorm 20-100x slower (thread contention), and the tests' tensors are tiny anyway.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Every test under ``tests/ray`` runs on a local Ray: mark it, so ``-m "not ray"`` runs the unit tests alone."""
    ray_dir = Path(__file__).parent / "ray"
    for item in items:
        if ray_dir in Path(item.fspath).parents:
            item.add_marker(pytest.mark.ray)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted_hierarchy(
    rng: np.random.Generator, branching=(4, 3, 4), per_leaf: int = 40, dim: int = 32, spreads=(0.6, 0.25, 0.04)
):
    """Unit-norm points around leaves around sub-centres around centres (coarsest first).

    Returns ``(points (N, dim) float32, labels (N, 3))`` with labels finest level first, matching
    the prototype levels of ``hierarchical_kmeans``.
    """
    n_top, n_mid, n_leaf = branching
    points, labels = [], []
    for a in range(n_top):
        top = _unit(rng.standard_normal(dim))
        for b in range(n_mid):
            mid = _unit(top + spreads[0] * _unit(rng.standard_normal(dim)))
            for c in range(n_leaf):
                leaf = _unit(mid + spreads[1] * _unit(rng.standard_normal(dim)))
                pts = _unit(leaf + spreads[2] * rng.standard_normal((per_leaf, dim)))
                points.append(pts)
                fine = (a * n_mid + b) * n_leaf + c
                labels.append(np.tile([fine, a * n_mid + b, a], (per_leaf, 1)))
    return np.concatenate(points).astype(np.float32), np.concatenate(labels)


@pytest.fixture
def planted(rng):
    return planted_hierarchy(rng)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``$HIERCLR_TEST_DATA`` (set by .ci/run to ../shared/data); skips where it is absent."""
    root = os.environ.get("HIERCLR_TEST_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("HIERCLR_TEST_DATA is not set or missing: real-data test skipped")
    return Path(root)


@pytest.fixture(scope="session")
def fault_plan_file(tmp_path_factory) -> Path:
    """The fault plan every process of the session reads (:mod:`hierclr.runtime.faults`); set before Ray starts,
    so that Ray's worker processes inherit the variable."""
    from hierclr.runtime.faults import PLAN_ENV

    path = tmp_path_factory.mktemp("faults") / "plan.json"
    os.environ[PLAN_ENV] = str(path)
    return path


@pytest.fixture
def fault_plan(fault_plan_file):
    """``fault_plan([{"point": "train_step", "epoch": 2, "rank": 1}, ...])`` arms faults for one test."""
    from hierclr.runtime.faults import write_plan

    yield lambda faults: write_plan(fault_plan_file, faults)
    write_plan(fault_plan_file, [])


@pytest.fixture(scope="session")
def ray_session(fault_plan_file):
    """One local Ray for the whole test session, with explicit logical CPUs (the machine has 2 cores)."""
    import ray

    from hierclr.runtime.ray_start import use_local_train_env

    use_local_train_env()  # as a command's own local Ray does; before ray.init, so Tune trials inherit it too
    if not ray.is_initialized():
        # address="local": never join a `ray start` cluster another test (or the user) left on this machine
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory) -> Path:
    """Where ``builtin://digits`` is written once per test session."""
    return tmp_path_factory.mktemp("builtin")


@pytest.fixture(scope="session")
def cifar10_jpg_root(shared_data_dir, tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG tree (``cifar10-jpg/{train,test}/<class>/*.jpg``), extracted once per session."""
    import tarfile

    archive = shared_data_dir / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is missing")
    out = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out / "cifar10-jpg"
