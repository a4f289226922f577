"""The driver SIGKILLed mid-job, then rerun: no duplicates, no losses. The killed job gets its credentials
only from the environment (as on a cluster); the secret key appears in no output object (bytes and
Parquet metadata), in neither run's stdout/stderr, and in no file of the killed job's Ray session (logs)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from sew_pipeline.results import read_results
from tests.reliability.conftest import fault_files, wav_bytes
from tests.support.ray_cluster import HeadCluster, _stop

REPO = Path(__file__).resolve().parents[2]
N_GOOD = 24
FAULTS = ("corrupt_header.wav", "zero_length.wav", "nan.wav", "truncated.flac")


def _corpus(s3, prefix: str) -> dict[str, str | None]:
    expected, lines = {}, []
    files = fault_files()
    for i in range(N_GOOD):
        s3.put("corpus", f"{prefix}/g{i:02d}.wav", wav_bytes(1.5 + (i % 5) * 0.5, seed=i))
        lines.append({"id": f"g{i:02d}", "audio_filepath": f"g{i:02d}.wav"})
        expected[f"g{i:02d}"] = None
    for name in FAULTS:
        data, error_type = files[name]
        s3.put("corpus", f"{prefix}/{name}", data)
        lines.append({"id": name, "audio_filepath": name})
        expected[name] = error_type
    lines += [{"id": "missing", "audio_filepath": "nope.wav"},
              {"id": "denied", "audio_filepath": "s3://private/calls/secret-call.wav"}]
    expected.update(missing="missing", denied="permission")
    s3.put("corpus", f"{prefix}/manifest.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    return expected


def _job(s3, manifest: str, output: str, ray_tmp: Path, model: Path) -> subprocess.Popen:
    """jobs/transcribe_corpus.py with its own local Ray under ray_tmp; AWS_* env is the only credential source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(SEW_TEST_CLUSTER=ray_tmp.name, RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0",
               AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret, AWS_ENDPOINT_URL=s3.endpoint_url,
               AWS_REGION=s3.region)
    cmd = [sys.executable, "jobs/transcribe_corpus.py", "--set", f"manifest={manifest}", "--set", f"output={output}",
           "--set", f"model={model}", "--set", "decode.batch_rows=1", "--set", "inference.batch_rows=1"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _parts(s3, bucket: str, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".parquet")]


def _secret_in_tree(secret: bytes, root: Path) -> list[Path]:
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 64 * 2**20 and secret in p.read_bytes():
                hits.append(p)
        except OSError:
            continue
    return hits


def test_driver_kill_then_resume_exactly_once_and_no_secret(ray_session, s3_iam, tiny_ctc_dir, capfd):
    s3, run = s3_iam, uuid.uuid4().hex[:8]
    expected = _corpus(s3, f"dk-{run}")
    manifest, out_prefix = f"s3://corpus/dk-{run}/manifest.jsonl", f"dk-{run}"
    output, ray_tmp, logs = f"s3://results/{out_prefix}", Path(f"/tmp/sew_dk_{run}"), []

    proc = _job(s3, manifest, output, ray_tmp, tiny_ctc_dir)
    try:  # SIGKILL the driver (and its whole local Ray) once part of the output exists
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not _parts(s3, "results", out_prefix):
            time.sleep(0.2)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        logs.append(proc.communicate(timeout=30)[0])
        hits = _secret_in_tree(s3.secret.encode(), ray_tmp)  # every Ray log of the killed run
    finally:
        _stop(HeadCluster("", "", {}, ray_tmp))
    assert not hits, hits
    first = _parts(s3, "results", out_prefix)
    assert first, "the job wrote nothing before it was killed"

    # The rerun resumes on the shared test Ray (credentials from the config this time: its workers
    # cannot see this process's environment).
    from sew_pipeline import ray_pipeline
    from sew_pipeline.config import TranscribeConfig, load_config
    cfg = load_config(TranscribeConfig, None, [f"manifest={manifest}", f"output={output}", f"model={tiny_ctc_dir}",
                                                f"storage_options={json.dumps(s3.storage_options)}"])
    result = ray_pipeline.transcribe(cfg)
    summary = result.summary
    captured = capfd.readouterr()
    logs.append(captured.out + captured.err)

    opts = s3.storage_options
    table = read_results(output, opts)
    assert Counter(table.column("id").to_pylist()) == Counter(expected.keys())  # every id exactly once
    rows = {r["id"]: r for r in table.to_pylist()}
    assert {k: r["error_type"] for k, r in rows.items()} == expected
    assert all(rows[k]["text"] is not None for k, v in expected.items() if v is None)
    assert summary["skipped_already_done"] > 0 and summary["ids_not_written"] == 0
    assert summary["skipped_already_done"] + summary["ids_written"] == len(expected)
    rerun = [r["id"] for r in rows.values() if r["run_id"] == result.run_id]
    assert summary["ids_written"] == len(rerun)
    assert summary["errors_by_type"] == dict(Counter(expected[i] for i in rerun if expected[i]))
    client = s3.client()
    for key in _parts(s3, "results", out_prefix):  # raw output objects, metadata included
        assert s3.secret.encode() not in client.get_object(Bucket="results", Key=key)["Body"].read()
    assert all(s3.secret not in text for text in logs)
