"""The KubeRay manifests (cluster_configs/kuberay/*.yaml): the fields the ray.io/v1 CRDs require, entrypoints
that name scripts and presets of this repository, and GPU/CPU requests that hold the runs they start."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray
import yaml

from hierclr.config.loader import list_presets
from hierclr.config.sweep import list_sweep_presets

CLUSTER_CONFIGS = Path(__file__).resolve().parents[3] / "cluster_configs"
KUBERAY = CLUSTER_CONFIGS / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} is empty"
    return docs


def _all_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in MANIFESTS for d in _docs(p)]


def _of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, d) for name, d in _all_docs() if d["kind"] == kind]


def _cluster_spec(doc: dict) -> dict:
    """The RayCluster spec a RayCluster or RayJob runs on (a RayJob's clusterSelector names a RayCluster here)."""
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    if "rayClusterSpec" in doc["spec"]:
        return doc["spec"]["rayClusterSpec"]
    wanted = doc["spec"]["clusterSelector"]["ray.io/cluster"]
    found = [d["spec"] for _, d in _of_kind("RayCluster") if d["metadata"]["name"] == wanted]
    assert found, f"RayJob {doc['metadata']['name']}: clusterSelector names RayCluster {wanted!r}, not in {KUBERAY}"
    return found[0]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _quantity(value) -> float:
    """Kubernetes CPU quantity -> cores ("90", "500m", 4)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _groups(spec: dict, cluster_checks) -> list:
    out = []
    head_cpus = float(spec["headGroupSpec"]["rayStartParams"].get("num-cpus", "nan"))
    out.append(cluster_checks.NodeGroup("head", head_cpus, 0, 1))
    for g in spec["workerGroupSpecs"]:
        limits = _containers(g)[0]["resources"]["limits"]
        cpus = float(g["rayStartParams"].get("num-cpus", _quantity(limits["cpu"])))
        gpus = float(g["rayStartParams"].get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        out.append(cluster_checks.NodeGroup(g["groupName"], cpus, gpus, g["maxReplicas"]))
    return out


def test_manifests_exist_and_parse():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.yaml", "rayjob-pretrain.yaml", "rayjob-sweep.yaml"} <= names, names
    for name, doc in _all_docs():
        assert doc.get("apiVersion") == "ray.io/v1", f"{name}: apiVersion {doc.get('apiVersion')!r}"
        assert doc.get("kind") in ("RayCluster", "RayJob"), f"{name}: kind {doc.get('kind')!r}"
        assert doc.get("metadata", {}).get("name"), f"{name}: metadata.name is required"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), f"{name}: not a DNS-1123 name"


def _specs():
    out = [(f"{n}:RayCluster", d["spec"]) for n, d in _of_kind("RayCluster")]
    out += [(f"{n}:rayClusterSpec", d["spec"]["rayClusterSpec"]) for n, d in _of_kind("RayJob")
            if "rayClusterSpec" in d["spec"]]
    return out


@pytest.mark.parametrize(("where", "spec"), _specs(), ids=[w for w, _ in _specs()])
def test_cluster_specs_have_the_required_groups(where, spec):
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion {spec['rayVersion']} != installed {ray.__version__}"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: the head should take no tasks (num-cpus: \"0\")"
    assert _containers(head), f"{where}: headGroupSpec.template.spec.containers is empty"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: workerGroupSpecs is empty"
    gpu_groups = []
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict), g
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}/{g['groupName']}: replica bounds"
        (container,) = _containers(g)
        res = container["resources"]
        assert res["requests"] == res["limits"], f"{where}/{g['groupName']}: requests should equal limits"
        if "nvidia.com/gpu" in res["limits"]:
            gpu_groups.append(g)
            assert int(res["limits"]["nvidia.com/gpu"]) == 8, f"{where}/{g['groupName']}: one pod per 8-GPU node"
    assert gpu_groups and len(gpu_groups) < len(groups), f"{where}: expected a GPU group and a CPU group"
    for g in [head, *groups]:
        for c in _containers(g):
            assert f"ray{ray.__version__}" in c["image"], f"{where}: image {c['image']} is not built on Ray {ray.__version__}"
        mounts = {m["mountPath"] for c in _containers(g) for m in c.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{where}: mount a memory emptyDir at /dev/shm (Ray's object store)"
    assert spec.get("enableInTreeAutoscaling") is True


def test_rayjob_cluster_spec_is_raycluster_yaml():
    """rayjob-pretrain.yaml repeats raycluster.yaml's spec; they must not drift apart."""
    (_, cluster), = _of_kind("RayCluster")
    for name, job in _of_kind("RayJob"):
        if "rayClusterSpec" in job["spec"]:
            assert job["spec"]["rayClusterSpec"] == cluster["spec"], f"{name}: rayClusterSpec differs from raycluster.yaml"


def test_dockerfile_builds_on_this_ray():
    text = (KUBERAY / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-"), base
    assert re.search(r'pip install .*hierclr\[gpu\]', text), "the image should install hierclr with the gpu extra"


@pytest.mark.parametrize(("name", "job"), _of_kind("RayJob"), ids=[n for n, _ in _of_kind("RayJob")])
def test_rayjob_fields_and_runtime_env(name, job):
    spec = job["spec"]
    assert spec["entrypoint"].strip()
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), f"{name}: exactly one of rayClusterSpec / clusterSelector"
    if "clusterSelector" in spec:
        assert not spec.get("shutdownAfterJobFinishes", False), f"{name}: never shut down a selected (shared) cluster"
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    wd = env["working_dir"]
    assert re.match(r"(s3|gs|https)://.+\.zip$", wd), f"{name}: a RayJob cannot upload a directory; working_dir {wd!r}"
    recipe = yaml.safe_load((CLUSTER_CONFIGS / "runtime_env" / "cluster.yaml").read_text())
    assert env.get("env_vars", {}) == recipe["env_vars"], f"{name}: env_vars differ from runtime_env/cluster.yaml"
    assert set(env) <= {"working_dir", "env_vars", "pip", "uv", "excludes"}, env


@pytest.mark.parametrize(("name", "job"), _of_kind("RayJob"), ids=[n for n, _ in _of_kind("RayJob")])
def test_rayjob_entrypoint_names_a_script_and_preset_that_exist(name, job, cluster_checks):
    ep = cluster_checks.parse_entrypoint(job["spec"]["entrypoint"])
    if ep.verb == "pretrain":
        assert ep.args.config in list_presets(), f"{name}: --config {ep.args.config} is not a preset"
    else:
        assert ep.args.space in list_sweep_presets(), f"{name}: --space {ep.args.space} is not a sweep preset"
    sets = dict(s.split("=", 1) for s in ep.args.set or ())
    prefix = "set." if ep.verb == "sweep" else ""
    for key in ("data.train", "data.val"):
        assert re.match(r"(s3|gs)://", sets.get(prefix + key, "")), f"{name}: {prefix}{key} should be an object store URI"
    assert sets.get(prefix + "tracking.uri", "").startswith("http"), f"{name}: a cluster needs an MLflow tracking server"
    storage = sets.get("storage_path" if ep.verb == "sweep" else "checkpoint.storage_path", "")
    assert re.match(r"(s3|gs)://", storage), f"{name}: multi-node checkpoints need shared (s3/gs) storage"


@pytest.mark.parametrize(("name", "job"), _of_kind("RayJob"), ids=[n for n, _ in _of_kind("RayJob")])
def test_rayjob_resources_hold_its_run(name, job, cluster_checks):
    """The job's config (preset + --set overrides, validated) placed on its cluster's groups at maxReplicas:
    workers x gpus_per_worker (+ GPU actors) <= GPU pods x GPUs per pod, and every bundle finds a pod."""
    ep = cluster_checks.parse_entrypoint(job["spec"]["entrypoint"])
    problems = cluster_checks.placement_problems(ep.bundles(), _groups(_cluster_spec(job), cluster_checks))
    assert not problems, f"{name}: {problems}"


def test_raycluster_holds_every_preset(cluster_checks):
    from hierclr.config.pretrain import load_config

    (_, cluster), = _of_kind("RayCluster")
    groups = _groups(cluster["spec"], cluster_checks)
    for preset in list_presets():
        problems = cluster_checks.placement_problems(cluster_checks.run_bundles(load_config(preset)), groups)
        assert not problems, f"{preset}: {problems}"
