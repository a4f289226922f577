"""One local Ray per test session (started lazily, shut down at the end), and a separate
`ray start --head` cluster with token auth for job-submission tests."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_session():
    """A shared local Ray (2 CPUs, no dashboard) for in-process pipeline tests."""
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 _temp_dir=f"/tmp/ray_pytest_{os.getpid()}")
    yield ray
    ray.shutdown()


@dataclass
class HeadCluster:
    address: str          # GCS address host:port
    dashboard_url: str    # job submission address
    env: dict             # environment for ray CLI calls against this cluster (token included)
    temp_dir: Path


def _ray_pids(temp_dir: Path) -> list[int]:
    """Processes of this cluster only: those that inherited SEW_TEST_CLUSTER=<its name>, or (Ray's
    setproctitle clobbers /proc/<pid>/environ) hold a file open under its own temp dir. Command
    lines are not matched: a shell that merely mentions the path is not ours to kill."""
    marker = f"SEW_TEST_CLUSTER={temp_dir.name}".encode()
    prefix = str(temp_dir) + "/"
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0") or _holds_file_under(proc, prefix):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _holds_file_under(proc: Path, prefix: str) -> bool:
    if not prefix.startswith("/tmp/"):
        return False
    for fd in (proc / "fd").iterdir():
        try:
            if os.readlink(fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _start_node(temp_dir: Path, env: dict, num_cpus: int, head: str | None = None,
                memory_mb: int | None = None, system_config: dict | None = None) -> tuple[str, str]:
    """`ray start` of a head (head=None) or of a worker joining ``head``, on 127.0.0.1 with its own temp dir
    (a shared one lets one node's runtime-env cleanup delete the other's working_dir). Returns
    (GCS address, dashboard URL) for a head."""
    # Every fixed default port (agent 52365, client 10001, ...) would collide with other clusters on
    # this machine (other sessions' Rays, the shared test Ray): give each one a free port.
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port")]
    port, dash = free_port(), free_port()
    role = (["--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             "--include-dashboard=true", f"--ray-client-server-port={free_port()}"] if head is None
            else [f"--address={head}"])
    cmd = [str(VENV_BIN / "ray"), "start", *role, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
           "--num-gpus=0", *ports, f"--temp-dir={temp_dir}", "--disable-usage-stats",
           *([f"--memory={memory_mb * 2**20}"] if memory_mb else []),
           *([f"--system-config={json.dumps(system_config)}"] if system_config else [])]
    out = subprocess.run(cmd, env={**env, "SEW_TEST_CLUSTER": temp_dir.name}, cwd=REPO, capture_output=True,
                         text=True, timeout=180, start_new_session=True)
    assert out.returncode == 0, f"ray start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"


def _token_env(temp_dir: Path) -> dict:
    token = uuid.uuid4().hex + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
               SEW_TEST_CLUSTER=temp_dir.name, RAY_USAGE_STATS_ENABLED="0")
    return env


@pytest.fixture(scope="session")
def ray_head_cluster(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with RAY_AUTH_MODE=token; stopped (its processes only) after."""
    temp_dir = Path(f"/tmp/ray_head_{uuid.uuid4().hex[:8]}")
    env = _token_env(temp_dir)
    cluster = HeadCluster("", "", env, temp_dir)
    try:
        cluster.address, cluster.dashboard_url = _start_node(temp_dir, env, num_cpus=2)
        yield cluster
    finally:
        _stop(cluster)


@dataclass
class TwoNodes:
    head: HeadCluster
    worker_temp_dir: Path

    def kill_worker(self) -> int:
        """SIGKILL every process of the worker node (its raylet, workers and actors): a lost machine."""
        pids = _ray_pids(self.worker_temp_dir)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)


NODE_DEATH_FAST = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@pytest.fixture
def ray_two_nodes():
    """A head (1 CPU) and a worker node (3 CPUs, 512 MiB of task memory) on 127.0.0.1 (own temp dirs and ports,
    token auth). The small head cannot hold every model actor, so some run on the worker, the node a test then
    loses. The worker's task memory admits no 1 GiB decode task: 0.25-CPU decode tasks that take the worker
    first would starve a 0.75-CPU actor (each freed quarter CPU goes to the next queued task; seen on CI and
    here, also with room for two decode tasks: the worker's actor never started, the head's did all the work).
    So the worker runs model actors and finalize tasks, the head decoding.
    The head declares a silent node dead after 3 missed health checks 1 s apart (Ray's default: 5 x 3 s): with
    ~15 s of grace a kill late in the pass let the pass finish before the node was declared dead, so the test
    had to kill early, in a window the worker's late-starting actor missed now and then."""
    head_dir, worker_dir = (Path(f"/tmp/ray_{role}_{uuid.uuid4().hex[:8]}") for role in ("head", "wrk"))
    env = _token_env(head_dir)
    head = HeadCluster("", "", env, head_dir)
    try:
        head.address, head.dashboard_url = _start_node(head_dir, env, num_cpus=1, system_config=NODE_DEATH_FAST)
        _start_node(worker_dir, env, num_cpus=3, head=head.address, memory_mb=512)
        yield TwoNodes(head, worker_dir)
    finally:
        _stop(HeadCluster("", "", env, worker_dir))
        _stop(head)


# What a job's working_dir upload leaves out (the venv and outputs are large and not needed on the cluster).
JOB_EXCLUDES = [".git", ".venv", "data", "outputs", "training/work", "**/__pycache__", ".pytest_cache"]
_ENDED = re.compile(r"SUCCEEDED|FAILED|STOPPED")


def ray_cli(cluster: HeadCluster) -> str:
    return str(Path(cluster.env["PATH"].split(":")[0]) / "ray")


@dataclass
class SubmittedJob:
    cluster: HeadCluster
    job_id: str

    def cli(self, *args: str) -> str:
        """`ray job <args> --address ... <job id>`: its stdout and stderr."""
        done = subprocess.run([ray_cli(self.cluster), "job", *args, "--address", self.cluster.dashboard_url,
                               self.job_id], env=self.cluster.env, capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    def ended(self) -> bool:
        return bool(_ENDED.search(self.cli("status").upper()))

    def wait(self, timeout_s: float, poll_s: float = 1.0) -> str:
        """Poll until the job ends (or timeout_s); returns the last `ray job status` output."""
        deadline, status = time.time() + timeout_s, ""
        while time.time() < deadline:
            status = self.cli("status")
            if _ENDED.search(status.upper()):
                break
            time.sleep(poll_s)
        return status


def submit_job(cluster: HeadCluster, job_id: str, entrypoint: list[str], env_vars: dict | None = None
               ) -> SubmittedJob:
    """`ray job submit --no-wait` of `entrypoint` with this repository as working_dir (JOB_EXCLUDES left out),
    retried while the job agent right after `ray start` is still coming up."""
    runtime_env = {"excludes": JOB_EXCLUDES, **({"env_vars": env_vars} if env_vars else {})}
    cmd = [ray_cli(cluster), "job", "submit", "--address", cluster.dashboard_url, "--submission-id", job_id,
           "--no-wait", "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
    deadline = time.time() + 300
    while True:
        proc = subprocess.run(cmd, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=120)
        if "No available agent" not in proc.stdout + proc.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return SubmittedJob(cluster, job_id)


def _stop(cluster: HeadCluster) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _ray_pids(cluster.temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while pids and time.time() < deadline and _ray_pids(cluster.temp_dir):
            time.sleep(0.5)
    if cluster.temp_dir.is_absolute():
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
