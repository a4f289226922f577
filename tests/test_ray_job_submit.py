"""`ray job submit` of jobs/transcribe_corpus.py to a `ray start --head` cluster with token auth."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.ray_cluster import ray_cli, submit_job

REPO = Path(__file__).resolve().parents[1]
LIBRI = REPO / "tests/data/LibriSpeech"


@pytest.mark.slow
def test_ray_job_submit_transcribe_corpus(ray_head_cluster, tmp_path, tiny_ctc_dir):
    cluster = ray_head_cluster
    out = tmp_path / "out"
    job_id = f"sew-test-{tmp_path.name}"
    job = submit_job(cluster, job_id, [
        "python", "jobs/transcribe_corpus.py", "--config", "configs/transcribe_corpus.yaml",
        "--set", f"manifest={LIBRI}", "--set", f"output={out}", "--set", f"model={tiny_ctc_dir}"])
    status = job.wait(timeout_s=300)
    logs = job.cli("logs")
    assert "SUCCEEDED" in status.upper(), status[-2000:] + logs[-4000:]
    assert "padded-frame fraction" in logs  # the summary table reached the job log
    ids = pq.read_table(out, columns=["id", "error_type"]).to_pylist()
    expected = sorted(p.stem for p in LIBRI.rglob("*.flac"))
    assert sorted(r["id"] for r in ids) == expected and all(r["error_type"] is None for r in ids)

    def job_list(env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([ray_cli(cluster), "job", "list", "--address", cluster.dashboard_url], env=env,
                              capture_output=True, text=True, timeout=60)

    allowed = job_list(cluster.env)  # the same call with the token is served (so a refusal below is the token's)
    assert allowed.returncode == 0 and job_id in allowed.stdout + allowed.stderr, (allowed.stdout + allowed.stderr)[-2000:]
    # Token auth really is on at the server: a client that sends no token gets 401, a wrong token 403.
    plain = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    plain["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    no_token = job_list(plain)
    said = no_token.stdout + no_token.stderr
    assert no_token.returncode != 0 and re.search(r"401|Unauthorized", said), said[-2000:]
    wrong = job_list({**cluster.env, "HOME": str(tmp_path), "RAY_AUTH_TOKEN": "0" * 64})
    said = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and re.search(r"403|Forbidden|invalid or incorrect", said), said[-2000:]
