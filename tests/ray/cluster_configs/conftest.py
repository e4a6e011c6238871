"""Shared by the cluster config tests: where the configs are, and whether a run fits a cluster's node groups.

Test modules get the helpers through the ``cluster_checks`` fixture (under ``--import-mode=importlib`` a
conftest is not importable by name)."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[3]
CLUSTER_CONFIGS = REPO / "cluster_configs"


@dataclass(frozen=True)
class NodeGroup:
    """One node type (launcher) or worker group (KubeRay) at its largest: what Ray may schedule on each node."""

    name: str
    cpus: float
    gpus: float
    max_nodes: int


def run_bundles(cfg, copies: int = 1, driver_cpus: float = 0.0) -> list[tuple[str, float, float]]:
    """The (what, CPUs, GPUs) resource requests of ``copies`` concurrent runs of ``cfg``, as Ray places them:
    one per Train worker, clustering actor and Ray Data CPU (1-CPU tasks), plus a per-run driver (sweep trials).
    Their sums equal the run's own needs (:func:`hierclr.runtime.driver.run_needs`; checked here, so the two
    cannot drift)."""
    from hierclr.config.pretrain import PretrainConfig
    from hierclr.methods import plan_for
    from hierclr.runtime.driver import run_needs

    res = cfg.resources
    one: list[tuple[str, float, float]] = []
    one += [("train worker", res.cpus_per_worker, plan_for(cfg).worker_gpus())] * res.num_workers
    if isinstance(cfg, PretrainConfig) and cfg.uses_clustering:
        layout = cfg.actor_layout()  # service.gpu_share: on the workers' GPUs, within what they no longer ask
        one += [("clustering actor", layout.actor_cpus, layout.actor_gpus)] * layout.num_actors
    one += [("Ray Data task", 1.0, 0.0)] * cfg.data.num_cpus
    need_cpu, need_gpu = run_needs(cfg)
    assert abs(sum(b[1] for b in one) - need_cpu) < 1e-9 and abs(sum(b[2] for b in one) - need_gpu) < 1e-9, (
        "run_bundles no longer matches hierclr.runtime.driver.run_needs: update this helper")
    if driver_cpus:
        one.append(("trial driver", driver_cpus, 0.0))
    return one * copies


def placement_problems(bundles: list[tuple[str, float, float]], groups: list[NodeGroup]) -> list[str]:
    """Place every bundle on the groups' nodes at their maximum counts (first fit, largest GPU and CPU
    requests first, as Ray's PACK strategy would); returns what could not be placed (empty: it fits)."""
    free = [[g.name, g.cpus, g.gpus] for g in groups for _ in range(g.max_nodes)]
    problems = []
    for what, cpu, gpu in sorted(bundles, key=lambda b: (-b[2], -b[1])):
        for node in free:
            if node[1] + 1e-9 >= cpu and node[2] + 1e-9 >= gpu:
                node[1] -= cpu
                node[2] -= gpu
                break
        else:
            problems.append(f"{what} ({cpu:g} CPU, {gpu:g} GPU)")
    if problems:
        total = (sum(g.cpus * g.max_nodes for g in groups), sum(g.gpus * g.max_nodes for g in groups))
        return [(f"{len(problems)} request(s) do not fit, e.g. {problems[0]}; the groups at their maximum hold "
                 f"{total[0]:g} CPU, {total[1]:g} GPU; requested {sum(b[1] for b in bundles):g} CPU, "
                 f"{sum(b[2] for b in bundles):g} GPU")]
    return []


@dataclass(frozen=True)
class Entrypoint:
    """A ``python pipelines/<verb>.py ARGS`` job entrypoint, parsed with hierclr's own CLI parser."""

    script: Path
    verb: str
    args: object  # argparse.Namespace

    def bundles(self) -> list[tuple[str, float, float]]:
        """What the job asks of the cluster: one run (pretrain) or max_concurrent_trials runs (sweep)."""
        if self.verb == "pretrain":
            from hierclr.config.pretrain import load_config

            return run_bundles(load_config(self.args.config, self.args.set or ()))
        from hierclr.config.sweep import load_sweep

        sweep = load_sweep(self.args.space, self.args.set or ())
        copies = sweep.max_concurrent_trials or 1
        return run_bundles(sweep.validate_space(), copies=copies, driver_cpus=sweep.trial_cpus)


def parse_entrypoint(text: str) -> Entrypoint:
    """``python pipelines/pretrain.py --config X --set k=v ...`` -> the script (must exist in the repo) and
    the arguments, parsed by ``hierclr.cli.build_parser`` (an unknown flag fails here)."""
    from hierclr.cli import build_parser

    argv = shlex.split(text)
    assert argv[:1] == ["python"], f"entrypoint should start with `python pipelines/<verb>.py`: {text!r}"
    script = REPO / argv[1]
    assert script.is_file(), f"entrypoint script {argv[1]} does not exist in the repository"
    verb = script.stem
    assert verb in ("pretrain", "sweep"), f"entrypoint script {argv[1]}: expected pipelines/pretrain.py or sweep.py"
    return Entrypoint(script=script, verb=verb, args=build_parser().parse_args([verb, *argv[2:]]))


@pytest.fixture(scope="session")
def cluster_checks() -> SimpleNamespace:
    return SimpleNamespace(REPO=REPO, CLUSTER_CONFIGS=CLUSTER_CONFIGS, NodeGroup=NodeGroup, run_bundles=run_bundles,
                           placement_problems=placement_problems, parse_entrypoint=parse_entrypoint)


@pytest.fixture(scope="session")
def ray_schema() -> dict:
    """The cluster launcher's JSON schema, as shipped inside the installed ``ray`` package."""
    import json

    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert path.is_file(), f"{path} is missing: the installed ray no longer ships the cluster config schema there"
    return json.loads(path.read_text())
