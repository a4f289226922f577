"""What a user sees from the job command when the plan cannot run, the cluster is stale, or an input is
wrong: a one-line error and a non-zero exit within seconds, or a job that goes on; never a hang."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.ray_cluster import HeadCluster, _stop

REPO = Path(__file__).resolve().parents[1]
LIBRI = REPO / "tests/data/LibriSpeech"


def run_job(tmp_path, *sets: str, prelude: str = "", timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """jobs/transcribe_corpus.py in its own process with its own local Ray (stopped after, by its temp dir)."""
    ray_tmp = Path(f"/tmp/sew_start_{uuid.uuid4().hex[:8]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(SEW_TEST_CLUSTER=ray_tmp.name, RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    argv = ["jobs/transcribe_corpus.py", "--set", f"output={tmp_path / 'out'}", *[a for s in sets for a in ("--set", s)]]
    code = (f"import runpy, sys\n{prelude}\nsys.argv = {argv!r}\n"
            "runpy.run_path('jobs/transcribe_corpus.py', run_name='__main__')")
    (ray_tmp / "ray").mkdir(parents=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)
    finally:
        _stop(HeadCluster("", "", {}, ray_tmp))
    return proc, time.monotonic() - t0


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_num_actors_equal_to_cluster_cpus_fails_fast_naming_the_keys(tmp_path, tiny_ctc_dir):
    # The job's local Ray has this machine's CPUs: one model actor per CPU leaves none for decoding.
    proc, took = run_job(tmp_path, f"manifest={LIBRI}", f"model={tiny_ctc_dir}",
                         f"inference.num_actors={os.cpu_count()}")
    assert proc.returncode == 2 and took < 30, (took, proc.stderr[-2000:])
    line = error_line(proc)
    assert "inference.num_actors" in line and "decode.num_cpus" in line and f"{os.cpu_count()} CPU" in line


def test_a_stall_the_plan_check_missed_is_reported_by_the_watchdog(tmp_path, tiny_ctc_dir):
    # With the plan check switched off, the same plan hangs (actors hold every CPU); the watchdog must end it.
    skip_check = "import sew_pipeline.plan as p; p.check = lambda cfg, cluster: p.model_resources(cfg, cluster)"
    proc, took = run_job(tmp_path, f"manifest={LIBRI}", f"model={tiny_ctc_dir}",
                         f"inference.num_actors={os.cpu_count()}", "progress_timeout_s=8", prelude=skip_check)
    assert proc.returncode == 2 and took < 90, (took, proc.stderr[-2000:])
    line = error_line(proc)
    assert "no progress for" in line and "starved: decode" in line and "CPU 0/" in line, line


def test_the_watchdog_ends_a_stalled_job_started_with_sigint_ignored(tmp_path, tiny_ctc_dir):
    # `job &` from a script starts the job with SIGINT ignored; the watchdog must not depend on SIGINT.
    skip_check = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                  "import sew_pipeline.plan as p; p.check = lambda cfg, cluster: p.model_resources(cfg, cluster)")
    proc, took = run_job(tmp_path, f"manifest={LIBRI}", f"model={tiny_ctc_dir}",
                         f"inference.num_actors={os.cpu_count()}", "progress_timeout_s=8", prelude=skip_check)
    assert proc.returncode == 2 and took < 90, (took, proc.stderr[-2000:])
    assert "no progress for" in error_line(proc)


def test_a_dead_recorded_cluster_is_skipped_and_the_job_completes(tmp_path, tiny_ctc_dir):
    # `ray start --head` killed without `ray stop` leaves its address behind; nothing listens there now.
    dead = f"127.0.0.1:{free_port()}"
    prelude = ("import os; open(os.path.join(os.environ['RAY_TMPDIR'], 'ray', 'ray_current_cluster'), 'w')"
               f".write({dead!r})")
    proc, took = run_job(tmp_path, f"manifest={LIBRI}", f"model={tiny_ctc_dir}", prelude=prelude)
    assert proc.returncode == 0 and took < 60, (took, proc.stderr[-3000:])
    assert "is not running" in proc.stderr and dead in proc.stderr
    assert '"ids_written": 3' in proc.stdout


@pytest.mark.parametrize("sets, expect", [
    (["manifest=/no/such/manifest.jsonl"], "manifest /no/such/manifest.jsonl: not found"),
    (["manifest=/no/such/parts-*.jsonl"], "no manifest part"),
    ([f"manifest={LIBRI}", "model=/no/such/model"], "model '/no/such/model'"),
    ([f"manifest={LIBRI}", "ray_address=127.0.0.1:9"], "no Ray cluster answers there"),
])
def test_user_errors_are_one_line_before_ray_starts(tmp_path, tiny_ctc_dir, sets, expect):
    proc, took = run_job(tmp_path, *sets, *([] if any(s.startswith("model=") for s in sets) else
                                          [f"model={tiny_ctc_dir}"]))
    assert proc.returncode == 2 and took < 20, (took, proc.stderr[-2000:])
    assert expect in error_line(proc)
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
