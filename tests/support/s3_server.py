"""Real S3 servers on 127.0.0.1 for tests: moto in server mode, one process per fixture.

`s3_server` (session): permissive server, any key works. `s3_server_strict` (session, started only
by tests that ask for it): IAM enforced after setup, with a user that has no rights, so reads get a
real 403 AccessDenied. Each server runs in its own process group and is stopped by that group only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.support.ports import free_port

__all__ = ["S3Server", "start_s3_server", "stop_s3_server", "s3_server", "s3_server_strict"]


@dataclass
class S3Server:
    endpoint_url: str
    key: str = "test-access-key"
    secret: str = "test-secret-key-0123456789"
    region: str = "us-east-1"
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs options for this server (what a job config would carry)."""
        return {"key": self.key, "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region}}

    def client(self, service: str = "s3", key: str | None = None, secret: str | None = None):
        import boto3
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret)

    def create_bucket(self, name: str) -> str:
        s3 = self.client()
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def put(self, bucket: str, key: str, data: bytes | str | Path) -> str:
        """Upload bytes, text or a local file; returns the s3:// URI."""
        if isinstance(data, Path):
            data = data.read_bytes()
        elif isinstance(data, str):
            data = data.encode()
        self.create_bucket(bucket)
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> str:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                self.put(bucket, f"{prefix}/{p.relative_to(local).as_posix()}", p)
        return f"s3://{bucket}/{prefix}"


def start_s3_server(timeout_s: float = 30.0, unauthenticated_actions: int | None = None) -> S3Server:
    """Start moto on a free port. With `unauthenticated_actions`, moto lets that many requests through
    and then authenticates every request and evaluates IAM policies (moto's INITIAL_NO_AUTH_ACTION_COUNT)."""
    port = free_port()
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
    if unauthenticated_actions is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(unauthenticated_actions)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # own process group: stopped by its pgid only
    server = S3Server(endpoint_url=f"http://127.0.0.1:{port}", proc=proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(server.endpoint_url + "/moto-api/", timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    stop_s3_server(server)
    raise RuntimeError(f"moto server not ready on {server.endpoint_url} after {timeout_s}s")


def stop_s3_server(server: S3Server) -> None:
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the group we created with start_new_session
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    server = start_s3_server()
    try:
        yield server
    finally:
        stop_s3_server(server)


@pytest.fixture(scope="session")
def s3_server_strict():
    """Server holding s3://private/... readable by nobody: yields (server, options of a user with
    no IAM rights). Requests signed by that user get a genuine 403 AccessDenied."""
    server = start_s3_server(unauthenticated_actions=4)  # exactly the 4 setup requests below
    try:
        s3, iam = server.client("s3"), server.client("iam")
        s3.create_bucket(Bucket="private")
        s3.put_object(Bucket="private", Key="calls/secret-call.wav", Body=b"RIFF....WAVE")
        iam.create_user(UserName="no-rights")
        key = iam.create_access_key(UserName="no-rights")["AccessKey"]
        options = {**server.storage_options, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        yield server, options
    finally:
        stop_s3_server(server)
