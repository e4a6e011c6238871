"""The local runtime env and the documented `ray job submit` command, end to end: this test starts its own
Ray head on loopback (`ray start --head --block`, token authentication on, ports of its own), submits a tiny
pretrain of the demo preset shrunk by cluster_configs/local/laptop.overrides, follows its logs and waits
for SUCCEEDED. Everything runs in subprocesses against an explicit address: no `ray.init()` here, so an
in-process Ray of the test session (the ``ray_session`` fixture) is neither used nor disturbed.

Teardown stops exactly the head this test started (SIGTERM to its `ray start --block`, which stops its
own Ray processes), not `ray stop`, which would stop every Ray on the machine, other sessions' included."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from hierclr.config.evaluate import list_evaluate_presets
from hierclr.config.loader import list_presets
from hierclr.config.pretrain import load_config
from hierclr.config.supervised import list_supervised_presets
from hierclr.config.sweep import list_sweep_presets

REPO = Path(__file__).resolve().parents[3]
CLUSTER_CONFIGS = REPO / "cluster_configs"
LOCAL_ENV = "cluster_configs/runtime_env/local.yaml"
RAY = str(Path(sys.executable).with_name("ray"))


def laptop_overrides() -> list[str]:
    """cluster_configs/local/laptop.overrides as `key=value` strings (what run-local.sh --laptop passes)."""
    out = []
    for line in (CLUSTER_CONFIGS / "local" / "laptop.overrides").read_text().splitlines():
        line = line.split("#", 1)[0].strip().replace(" ", "")
        if line:
            out.append(line)
    return out


# ----------------------------------------------------------------------------------------- no Ray needed
@pytest.mark.parametrize("preset", list_presets())
def test_laptop_overrides_shrink_every_preset_to_four_cpus(preset):
    """`run-local.sh pretrain --laptop --config <any preset>` makes a valid config that a 4-CPU local Ray
    without GPUs holds."""
    from hierclr.runtime.driver import run_needs

    cfg = load_config(preset, laptop_overrides())
    need_cpu, need_gpu = run_needs(cfg)
    assert need_gpu == 0 and need_cpu <= 4, f"{preset} with laptop.overrides needs {need_cpu} CPU, {need_gpu} GPU"
    assert cfg.method == load_config(preset).method


def test_runtime_envs_ship_the_code_and_install_nothing_locally():
    local = yaml.safe_load((REPO / LOCAL_ENV).read_text())
    assert set(local) <= {"excludes", "env_vars"}, f"the local runtime env must not install anything: {sorted(local)}"
    cluster = yaml.safe_load((CLUSTER_CONFIGS / "runtime_env" / "cluster.yaml").read_text())
    for env in (local, cluster):
        assert "working_dir" not in env, "working_dir comes from `--working-dir .` on the command line"
        assert ".git/" in env["excludes"] and env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".venv/" in ignored, ".venv must stay out of the `--working-dir .` upload (.gitignore is honoured)"


def _documented_commands() -> list[tuple[str, str]]:
    """(file, line) of every line in cluster_configs/*.md and the YAML comments that names a pipelines/ script."""
    out = []
    for path in sorted(CLUSTER_CONFIGS.rglob("*")):
        if path.suffix in (".md", ".yaml", ".sh") or path.name == "Dockerfile":
            out += [(path.relative_to(REPO).as_posix(), line) for line in path.read_text().splitlines()
                    if "pipelines/" in line]
    return out


def test_documented_commands_name_scripts_and_presets_that_exist():
    """Every documented command names a pipelines/ script, preset and sweep that exist."""
    commands = _documented_commands()
    assert commands
    for where, line in commands:
        for script in re.findall(r"pipelines/([\w-]+)\.py", line):
            assert (REPO / "pipelines" / f"{script}.py").is_file(), f"{where}: no pipelines/{script}.py: {line}"
        for preset in re.findall(r"--config[ =]([\w.-]+)", line):
            assert preset in (*list_presets(), *list_supervised_presets(), *list_evaluate_presets(), "PRESET"), (
                f"{where}: --config {preset} is not a preset")
        for space in re.findall(r"--space[ =]([\w.-]+)", line):
            assert space in list_sweep_presets() or space in ("SWEEP",), f"{where}: --space {space} is not a sweep"
    for where, line in commands:
        for path in re.findall(r"(cluster_configs/[\w./-]+\.(?:ya?ml|sh|md))", line):
            assert (REPO / path).is_file(), f"{where}: {path} does not exist"


# ----------------------------------------------------------------------------------- end to end on Ray
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalHead:
    """A Ray head started by this test, on loopback, with token authentication and ports of its own."""

    def __init__(self, workdir: Path) -> None:
        self.token = secrets.token_hex(32)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))  # short: Unix socket paths are limited
        gcs, dash, client, agent, agent_grpc, metrics, env_agent, node_mgr, obj_mgr = _free_ports(9)
        self.address = f"http://127.0.0.1:{dash}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # `python` in a job's entrypoint is this interpreter, also when the tests run as `.venv/bin/python -m pytest`
        # without an activated venv (the job driver otherwise finds a system python without torch)
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        head_env = dict(self.env,
                        # Ray-internal state queries (Train's placement group cleaner) find this cluster by
                        # this address, not by scanning the machine, which may run other Rays.
                        RAY_API_SERVER_ADDRESS=self.address,
                        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # SIGTERM stops it at once (no drain wait)
        self.log_path = workdir / "ray-head.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=4",
             "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
             f"--runtime-env-agent-port={env_agent}", f"--node-manager-port={node_mgr}",
             f"--object-manager-port={obj_mgr}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"],
            stdout=self._log, stderr=subprocess.STDOUT, env=head_env, start_new_session=True,
        )

    def get(self, path: str, token: str | None) -> int:
        """HTTP status of GET ``path`` on the dashboard, with or without the token."""
        req = urllib.request.Request(self.address + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def job_info(self, job_id: str) -> dict:
        """The job server's record of a job (REST ``/api/jobs/<id>``: status, message, timestamps)."""
        req = urllib.request.Request(f"{self.address}/api/jobs/{job_id}")
        req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/api/version", self.token) == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the Ray dashboard at {self.address} did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def ray(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], cwd=REPO, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # callers assert on returncode with the output

    def log_tail(self, n: int = 40) -> str:
        text = self.log_path.read_text() if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-n:])

    def stop(self) -> None:
        """SIGTERM to our `ray start --block`, which stops the Ray processes it started; then, should any be
        left, the process group it leads (start_new_session: only processes of this head)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            self._log.close()
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_head(tmp_path_factory):
    pytest.importorskip("ray.dashboard.optional_deps",
                        reason="`ray job` needs the Ray dashboard (job server): pip install 'ray[default]'")
    head = LocalHead(tmp_path_factory.mktemp("ray-head"))
    try:
        head.wait_ready()
        yield head
    finally:
        head.stop()


@pytest.mark.timeout(600)
def test_documented_job_submit_runs_a_tiny_pretrain(local_head, tmp_path):
    head = local_head
    # token authentication is on: the job server refuses a request without the token
    assert head.get("/api/version", None) in (401, 403)
    bad = head.ray("job", "list", "--address", head.address, env=dict(head.env, RAY_AUTH_TOKEN="0" * 64))
    assert bad.returncode != 0, "a wrong token should be refused"

    job_id = f"hierclr-e2e-{secrets.token_hex(4)}"
    sets = [*laptop_overrides(), f"checkpoint.storage_path={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"data.builtin_cache={tmp_path / 'builtin'}"]
    entrypoint = ["python", "pipelines/pretrain.py", "--config", "demo", *(a for s in sets for a in ("--set", s))]
    t0 = time.monotonic()
    submit = head.ray("job", "submit", "--address", head.address, "--working-dir", ".", "--runtime-env", LOCAL_ENV,
                      "--submission-id", job_id, "--no-wait", "--", *entrypoint)
    assert submit.returncode == 0, f"ray job submit failed:\n{submit.stdout}\n{submit.stderr}\n{head.log_tail()}"

    info: dict = {}
    try:
        follow = head.ray("job", "logs", "--address", head.address, "--follow", job_id, timeout=540)  # until it ends
        status = head.ray("job", "status", "--address", head.address, job_id)
        info = head.job_info(job_id)
    finally:
        if info.get("status") not in ("SUCCEEDED", "FAILED", "STOPPED"):
            head.ray("job", "stop", "--address", head.address, job_id)
    seconds = time.monotonic() - t0
    logs = follow.stdout
    assert info["status"] == "SUCCEEDED", (
        f"job {job_id}: {info.get('status')} ({info.get('message')})\n--- job logs ---\n{logs[-6000:]}")
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
    for epoch in (0, 1):  # once: not also through Ray Train's print patch (hierclr.runtime.console)
        assert logs.count(f"hierclr | epoch {epoch}/1") == 1, f"progress line of epoch {epoch}:\n{logs[-6000:]}"
    for noise in ("Reporting training result", "Loading faiss", "Token authentication"):
        assert noise not in logs, f"{noise!r} on the console:\n{logs[-6000:]}"
    assert "kNN top-1" in logs
    assert "Found multiple active Ray instances" not in logs, "a Ray process looked up the wrong cluster"
    runs = [p for p in (tmp_path / "runs").glob("demo-*") if p.is_dir()]
    assert runs and list(runs[0].glob("checkpoint_*")), f"no checkpoint under {tmp_path / 'runs'}"
    assert (tmp_path / "mlflow.db").is_file()
    print(f"tiny pretrain job {job_id}: SUCCEEDED in {seconds:.0f} s (submit to status)")


@pytest.mark.timeout(300)
def test_run_local_script_submits_to_a_running_head(local_head):
    """cluster_configs/local/run-local.sh against the head above: the same submit path, a quick job."""
    head = local_head
    proc = subprocess.run(
        ["bash", str(CLUSTER_CONFIGS / "local" / "run-local.sh"), "pretrain", "--laptop", "--config",
         "imagenet-r50-200ep", "--print-config"],
        cwd=REPO, env=dict(head.env, RAY_API_SERVER_ADDRESS=head.address), capture_output=True, text=True,
        timeout=240, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "succeeded" in out.lower(), out[-3000:]
    # the resolved config printed by the job: the preset's model family with the laptop's resources
    assert "name: imagenet-r50-200ep" in out and "use_gpu: false" in out and "backbone: resnet10" in out, out[-3000:]
    assert f"storage_path: {REPO}/hierclr_runs" in out, "run-local.sh keeps results in the repository"


@pytest.mark.timeout(300)
def test_cluster_runtime_env_is_accepted_by_ray(local_head):
    """runtime_env/cluster.yaml (what cluster jobs use; it installs nothing) passes Ray's runtime env checks and
    runs a job: the resolved config printed by the job driver."""
    head = local_head
    proc = head.ray("job", "submit", "--address", head.address, "--working-dir", ".", "--runtime-env",
                    "cluster_configs/runtime_env/cluster.yaml", "--", "python", "pipelines/pretrain.py",
                    "--config", "imagenet-r50-200ep", "--print-config", timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out, out[-6000:]
    assert "name: imagenet-r50-200ep" in out and "gpu_share: 0.1" in out, out[-3000:]
