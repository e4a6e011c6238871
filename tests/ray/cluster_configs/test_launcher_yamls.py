"""The Ray cluster launcher YAMLs (cluster_configs/aws|gcp/*.yaml): valid against the schema shipped in the
installed ``ray`` package and Ray's own pre-launch checks, and able to hold the runs the presets describe."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from hierclr.config.loader import list_presets
from hierclr.config.pretrain import load_config
from hierclr.config.supervised import list_supervised_presets, load_supervised_config
from hierclr.config.sweep import list_sweep_presets, load_sweep

CLUSTER_CONFIGS = Path(__file__).resolve().parents[3] / "cluster_configs"
LAUNCHER_YAMLS = sorted(p for d in ("aws", "gcp") for p in (CLUSTER_CONFIGS / d).glob("*.yaml"))

# vCPUs and GPUs of the instance types the YAMLs may use: a node type's declared resources must match its
# machine (the autoscaler trusts `resources`; a mismatch launches nodes that never fit the request).
INSTANCE_TYPES = {
    "aws": {"m6i.2xlarge": (8, 0), "c6i.32xlarge": (128, 0), "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8)},
    "gcp": {"n2-standard-8": (8, 0), "n2-highcpu-96": (96, 0), "a2-highgpu-8g": (96, 8), "a3-highgpu-8g": (208, 8)},
}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _instance_type(provider: str, node_config: dict) -> str:
    return node_config["InstanceType"] if provider == "aws" else node_config["machineType"]


def _node_groups(cfg: dict, cluster_checks) -> list:
    return [cluster_checks.NodeGroup(name, t["resources"].get("CPU", 0), t["resources"].get("GPU", 0),
                                     1 if name == cfg["head_node_type"] else t.get("max_workers", 0))
            for name, t in cfg["available_node_types"].items()]


def test_there_are_launcher_yamls_for_aws_and_gcp():
    assert {p.parent.name for p in LAUNCHER_YAMLS} == {"aws", "gcp"}, LAUNCHER_YAMLS


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_validates_against_rays_cluster_schema(path, ray_schema):
    jsonschema.Draft7Validator.check_schema(ray_schema)
    errors = sorted(jsonschema.Draft7Validator(ray_schema).iter_errors(_load(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{path.name}: {'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_passes_rays_own_prelaunch_checks(path):
    """What `ray up` does before it talks to the cloud: merge with the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(_load(path))))


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_node_type_names_its_image(path):
    """No node falls back to the provider's default image (on AWS Ray's is an Ubuntu 18.04 DLAMI older than H100
    drivers; it fills any node type without an ImageId, or with `latest_dlami`): each names one, the same for all."""
    cfg = _load(path)
    images = set()
    for name, t in cfg["available_node_types"].items():
        nc = t["node_config"]
        if path.parent.name == "aws":
            image = nc.get("ImageId") or ""
            assert image.lower() not in ("", "latest_dlami"), (name, image)
            assert re.fullmatch(r"ami-[0-9a-f]{8,17}|resolve:ssm:/aws/service/deeplearning/ami/\S+", image), image
        else:
            (boot,) = [d for d in nc["disks"] if d.get("boot")]
            image = boot["initializeParams"].get("sourceImage") or ""
            assert image.startswith("projects/"), (name, image)
        images.add(image)
    assert len(images) == 1, f"{path.name}: node types boot different images {images}"


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_node_types_declare_their_machines_resources(path):
    cfg = _load(path)
    provider = cfg["provider"]["type"]
    assert provider == path.parent.name
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head should take no tasks ({CPU: 0}): drivers and autoscaler only"
    assert "GPU" not in head["resources"]
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    cpu_types = [n for n, t in types.items() if n != cfg["head_node_type"] and n not in gpu_types]
    assert gpu_types and cpu_types, "expected a GPU worker type and a CPU (decoding) worker type"
    for name, t in types.items():
        itype = _instance_type(provider, t["node_config"])
        assert itype in INSTANCE_TYPES[provider], f"{name}: {itype} is not in this test's table; add its vCPUs/GPUs"
        vcpus, gpus = INSTANCE_TYPES[provider][itype]
        if name != cfg["head_node_type"]:
            assert t["resources"].get("CPU") == vcpus, f"{name}: CPU {t['resources'].get('CPU')} != {itype}'s {vcpus}"
            assert t["resources"].get("GPU", 0) == gpus, f"{name}: GPU {t['resources'].get('GPU', 0)} != {itype}'s {gpus}"
            assert t.get("min_workers", 0) <= t["max_workers"], name
    for name in gpu_types:
        assert types[name]["resources"]["GPU"] == 8, f"{name}: pretraining nodes are 8-GPU machines"
        if provider == "gcp":
            sched = types[name]["node_config"].get("scheduling", [])
            assert {"onHostMaintenance": "TERMINATE"} in sched, f"{name}: GCP GPU VMs need onHostMaintenance TERMINATE"
    worker_max = sum(t["max_workers"] for n, t in types.items() if n != cfg["head_node_type"])
    assert cfg["max_workers"] == worker_max, "global max_workers should equal the sum of the per-type limits"
    assert cfg["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_setup_installs_hierclr_with_the_gpu_extra_and_this_ray(path):
    cfg = _load(path)
    cmds = cfg["setup_commands"]
    install = [c for c in cmds if re.search(r"pip install .*hierclr\[gpu\]", c)]
    assert install, f"no setup command installs hierclr with the gpu extra: {cmds}"
    # the editable install reads the repository copied by file_mounts
    mounts = cfg["file_mounts"]
    assert any(remote.replace("~", "$HOME") in install[0] for remote in mounts), (install[0], mounts)
    assert any(local == "." for local in mounts.values()), "file_mounts should copy the repository (run from its root)"
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token", "share the Ray auth token with every node"
    pinned = [c for c in cmds if re.search(r"ray\[[^\]]*\]==", c)]
    assert pinned and all(f"=={ray.__version__}" in c for c in pinned), f"pin ray=={ray.__version__}: {pinned}"
    image = cfg["docker"]["image"]
    assert f":{ray.__version__}-" in image, f"docker image {image} should be Ray {ray.__version__}, as installed here"
    py = re.search(r"-py3(\d+)", image)
    assert py and int(py.group(1)) >= 10, f"hierclr needs Python >= 3.10: {image}"


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_fits_the_cluster_at_its_maximum(path, preset, cluster_checks):
    """Train workers, clustering actors and Ray Data CPUs of the preset can all be placed on the node types
    at their max_workers (e.g. imagenet-r50-200ep: 8 x (4 CPU, 0.9 GPU) + a 0.1-GPU actor + 48 CPUs)."""
    groups = _node_groups(_load(path), cluster_checks)
    problems = cluster_checks.placement_problems(cluster_checks.run_bundles(load_config(preset)), groups)
    assert not problems, f"{preset} on {path.name}: {problems}"


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("preset", list_supervised_presets())
def test_every_supervised_preset_fits_the_cluster_at_its_maximum(path, preset, cluster_checks):
    """finetune / hcal presets: Train workers and Ray Data CPUs on the node types at their max_workers."""
    groups = _node_groups(_load(path), cluster_checks)
    problems = cluster_checks.placement_problems(cluster_checks.run_bundles(load_supervised_config(preset)), groups)
    assert not problems, f"{preset} on {path.name}: {problems}"


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("space", list_sweep_presets())
def test_every_sweep_preset_fits_at_its_concurrency(path, space, cluster_checks):
    sweep = load_sweep(space)
    bundles = cluster_checks.run_bundles(sweep.validate_space(), copies=sweep.max_concurrent_trials or 1,
                                         driver_cpus=sweep.trial_cpus)
    problems = cluster_checks.placement_problems(bundles, _node_groups(_load(path), cluster_checks))
    assert not problems, f"sweep {space} ({sweep.max_concurrent_trials} concurrent trials) on {path.name}: {problems}"


def test_the_fit_check_rejects_what_does_not_fit(cluster_checks):
    """The placement check itself: 17 GPUs (16 workers + a whole-GPU actor) do not fit 2 x 8, 16 workers with
    the actor on their GPUs (service.gpu_share) do, a 4-CPU worker does not fit 3-CPU nodes."""
    ng = cluster_checks.NodeGroup
    two_nodes = [ng("head", 0, 0, 1), ng("gpu", 96, 8, 2)]
    own_gpu = ["resources.num_workers=16", "service.gpu_share=null", "service.gpus_per_actor=1"]
    assert cluster_checks.placement_problems(cluster_checks.run_bundles(load_config("imagenet-r50-200ep", own_gpu)),
                                             two_nodes)
    shared = load_config("imagenet-r50-200ep", ["resources.num_workers=16"])
    assert not cluster_checks.placement_problems(cluster_checks.run_bundles(shared), two_nodes)
    one_node = [ng("head", 0, 0, 1), ng("gpu", 96, 8, 1)]
    assert not cluster_checks.placement_problems(cluster_checks.run_bundles(load_config("imagenet-r50-200ep")),
                                                 one_node)
    assert cluster_checks.placement_problems(
        cluster_checks.run_bundles(load_config("imagenet-r50-200ep", own_gpu[1:])), one_node)  # 9 GPUs
    assert cluster_checks.placement_problems([("train worker", 4, 1)], [ng("small", 3, 8, 5)])
