"""One local Ray per test session (started lazily, shut down at the end), and a separate
`ray start --head` cluster with token auth for job-submission tests."""
from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def ray_head_cluster(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with RAY_AUTH_MODE=token; stopped (its processes only) after."""
    temp_dir = Path(f"/tmp/ray_head_{uuid.uuid4().hex[:8]}")
    token = uuid.uuid4().hex + uuid.uuid4().hex
    port, dash = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
               SEW_TEST_CLUSTER=temp_dir.name, RAY_USAGE_STATS_ENABLED="0")
    # Every fixed default port (agent 52365, client 10001, ...) would collide with other clusters on
    # this machine (other sessions' Rays, the shared test Ray): give each one a free port.
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--num-gpus=0", *ports,
           f"--temp-dir={temp_dir}", "--include-dashboard=true", "--disable-usage-stats"]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
                         start_new_session=True)
    cluster = HeadCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env, temp_dir)
    try:
        assert out.returncode == 0, f"ray start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        yield cluster
    finally:
        _stop(cluster)


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
