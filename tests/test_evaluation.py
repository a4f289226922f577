"""Nightly evaluation job logic with a stand-in transcriber (no Ray): outputs, history, gate.

The stand-in writes the pipeline's output schema from the transcripts, altered on purpose,
so expected WERs are computed here with jiwer from the fixture's own trans.txt files.
"""
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import jiwer
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from sew_pipeline import evaluation
from sew_pipeline.config import ConfigError, load_config
from sew_pipeline.schema import CTC_SCHEMA
from tests.support.paths import LIBRISPEECH_ROOT
from tests.test_reports import assert_nontrivial_png

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nightly_librispeech.yaml"


def fixture_transcripts() -> dict[str, tuple[str, str, str]]:
    """id -> (split, speaker, text), parsed here independently of sew_pipeline.manifests."""
    out = {}
    for trans in LIBRISPEECH_ROOT.glob("*/*/*/*.trans.txt"):
        split, speaker = trans.parts[-4], trans.parts[-3]
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            out[utt] = (split, speaker, text)
    return out


@dataclass
class FakeResult:
    output: str
    summary: dict


class FakeTranscriber:
    """Writes CTC_SCHEMA rows with hypothesis = corrupt(reference), rows in reverse order."""

    def __init__(self, corrupt=lambda utt, text: text, drop=()):
        self.corrupt, self.drop, self.calls = corrupt, set(drop), []

    def __call__(self, cfg):
        self.calls.append(cfg)
        refs = {u: v for u, v in fixture_transcripts().items() if v[0] == Path(cfg.manifest).name}
        rows = []
        for utt in sorted(refs, reverse=True):  # order differs from the manifest: join must use ids
            if utt in self.drop:
                continue
            flac = next(LIBRISPEECH_ROOT.glob(f"*/*/*/{utt}.flac"))
            dur = sf.info(str(flac)).duration
            rows.append({"id": utt, "item_id": utt, "audio_uri": str(flac), "channel": -1, "start_s": 0.0,
                         "end_s": dur, "duration_s": dur, "text": self.corrupt(utt, refs[utt][2]), "words": [],
                         "num_chunks": 1, "model": cfg.model, "checkpoint_sha256": "f" * 64, "processing_s": 0.5,
                         "frames": 10, "padded_frames": 0, "run_id": "x"})
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=CTC_SCHEMA), f"{cfg.output}/part-0.parquet")
        return FakeResult(cfg.output, {"wall_s": 2.0})


def drop_last_word(utt, text):
    return " ".join(text.split()[:-1]) if utt == "1272-128104-0000" else text


def garble(utt, text):
    words = text.split()
    return " ".join(w if i % 2 else "XX" for i, w in enumerate(words)) if utt.startswith("1272") else text


def _argv(tmp_path, run, **extra):
    sets = {"librispeech_root": str(LIBRISPEECH_ROOT), "output": str(tmp_path / "runs" / "{run_id}"),
            "history": str(tmp_path / "history.jsonl"), "run_id": run, **extra}
    return ["--config", str(CONFIG)] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def _expected_wer(split, corrupt):
    pairs = [(t, corrupt(u, t)) for u, (s, _, t) in sorted(fixture_transcripts().items()) if s == split]
    refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


def test_run_on_fixture_writes_parquet_summary_report(tmp_path, capsys):
    fake = FakeTranscriber(drop_last_word)
    assert evaluation.main(_argv(tmp_path, "r1"), transcribe=fake) == 0
    run = tmp_path / "runs" / "r1"
    assert sorted(Path(c.manifest).name for c in fake.calls) == ["dev-clean", "test-clean"]  # discovered

    summary = json.loads((run / "summary.json").read_text())
    wer, cer = _expected_wer("dev-clean", drop_last_word)
    assert summary["splits"]["dev-clean"]["wer"] == wer == 1 / (17 + 31)
    assert summary["splits"]["dev-clean"]["cer"] == cer
    assert summary["splits"]["test-clean"]["wer"] == 0.0
    assert summary["splits"]["dev-clean"]["n_utts"] == 2 and summary["splits"]["dev-clean"]["n_words"] == 48
    audio_s = 5.86 + 13.34
    assert summary["splits"]["dev-clean"]["audio_hours"] == pytest.approx(audio_s / 3600, abs=1e-4)
    assert summary["splits"]["dev-clean"]["real_time_factor"] == pytest.approx(2.0 / audio_s, rel=1e-3)
    assert summary["splits"]["dev-clean"]["audio_s_per_s"] == pytest.approx(audio_s / 2.0, rel=1e-3)
    assert summary["speakers"]["dev-clean"]["1272"]["deletions"] == 1
    assert summary["checkpoint_sha256"] == "f" * 64 and summary["run_id"] == "r1"
    assert summary["gate"]["passed"] is True

    utts = pd.read_parquet(run / "utterances.parquet").set_index("id")
    assert utts.loc["1272-128104-0000", "deletions"] == 1 and utts.loc["1272-128104-0000", "hits"] == 16
    assert utts.loc["1995-1837-0001", "split"] == "test-clean" and utts.loc["1995-1837-0001", "wer"] == 0.0
    assert utts.loc["1272-141231-0002", "hypothesis"] == fixture_transcripts()["1272-141231-0002"][2]

    md = (run / "report.md").read_text()
    assert "![WER per split](plots/wer_per_split.png)" in md and "1272-128104-0000" in md
    for png in ("wer_per_split.png", "wer_trend.png"):
        assert_nontrivial_png((run / "plots" / png).read_bytes())
    assert "dev-clean: WER 2.08%" in capsys.readouterr().out


def test_two_runs_build_two_point_trend_then_regression_fails_gate(tmp_path, capsys):
    history = tmp_path / "history.jsonl"
    assert evaluation.main(_argv(tmp_path, "r1"), transcribe=FakeTranscriber()) == 0
    # 0 % -> 2.08 % on dev-clean is over the 0.5-point margin
    assert evaluation.main(_argv(tmp_path, "r2"), transcribe=FakeTranscriber(drop_last_word)) == 1
    runs = [json.loads(line) for line in history.read_text().splitlines()]
    assert [r["run_id"] for r in runs] == ["r1", "r2"]
    assert [r["splits"]["dev-clean"]["wer"] for r in runs] == [0.0, 1 / 48]
    assert_nontrivial_png((tmp_path / "runs" / "r2" / "plots" / "wer_trend.png").read_bytes())
    err = capsys.readouterr().err
    assert "dev-clean" in err and "WER 0.0208" in err and "WER 0.0000" in err and "previous run r1" in err
    assert "test-clean" not in err

    # A third, much worse run fails against r2; the message names the split and both numbers.
    wer, _ = _expected_wer("dev-clean", garble)
    assert evaluation.main(_argv(tmp_path, "r3"), transcribe=FakeTranscriber(garble)) == 1
    err = capsys.readouterr().err
    assert f"dev-clean: WER {wer:.4f}" in err and "previous run r2 WER 0.0208" in err
    summary = json.loads((tmp_path / "runs" / "r3" / "summary.json").read_text())
    assert summary["gate"]["passed"] is False and "dev-clean" in summary["gate"]["failures"][0]
    assert err.count("GATE FAILED") == 1  # test-clean did not regress


def test_margin_allows_small_increase(tmp_path):
    assert evaluation.main(_argv(tmp_path, "r1"), transcribe=FakeTranscriber()) == 0
    argv = _argv(tmp_path, "r2", max_wer_increase=0.03)
    assert evaluation.main(argv, transcribe=FakeTranscriber(drop_last_word)) == 0


def test_baseline_file_gates_without_history(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"test-clean": 0.0, "dev-clean": 0.001}))
    argv = _argv(tmp_path, "r1", baseline=str(baseline), history="")
    assert evaluation.main(argv, transcribe=FakeTranscriber(drop_last_word)) == 1
    assert "dev-clean: WER 0.0208 (2.08%) is worse than baseline WER 0.0010" in capsys.readouterr().err
    assert not (tmp_path / "history.jsonl").exists()


def test_explicit_splits_parent_root_and_missing_rows(tmp_path):
    fake = FakeTranscriber(drop=["1272-141231-0002"])
    cfg = load_config(evaluation.EvalConfig, CONFIG, [
        f"librispeech_root={LIBRISPEECH_ROOT.parent}", "splits=[dev-clean]",  # parent of LibriSpeech/
        f"output={tmp_path}/out", "history=", "run_id=r1"])
    result = evaluation.evaluate(cfg, transcribe=fake)
    assert [Path(c.manifest).name for c in fake.calls] == ["dev-clean"]
    s = result.summary["splits"]
    assert list(s) == ["dev-clean"]
    # the utterance with no output row counts as 31 deletions and as a failure
    assert s["dev-clean"]["wer"] == pytest.approx(31 / 48) and s["dev-clean"]["n_failed"] == 1
    utts = pd.read_parquet(tmp_path / "out" / "utterances.parquet").set_index("id")
    assert utts.loc["1272-141231-0002", "error_type"] == "no_output"


def test_unknown_split_and_bad_config_are_clear_errors(tmp_path):
    cfg = load_config(evaluation.EvalConfig, CONFIG, [
        f"librispeech_root={LIBRISPEECH_ROOT}", "splits=[dev-other]", f"output={tmp_path}/o", "history="])
    with pytest.raises(FileNotFoundError, match="dev-other"):
        evaluation.evaluate(cfg, transcribe=FakeTranscriber())
    with pytest.raises(ConfigError, match="librispeech_root"):
        load_config(evaluation.EvalConfig, None, [f"output={tmp_path}"])
    with pytest.raises(ConfigError, match="manifest"):
        load_config(evaluation.EvalConfig, CONFIG, ["manifest=x.jsonl", "librispeech_root=/x"])
    cfg = load_config(evaluation.EvalConfig, CONFIG, ["baseline.dev-clean=0.05", "librispeech_root=/x"])
    assert cfg.baseline == {"dev-clean": 0.05} and cfg.max_wer_increase == 0.005


def test_transcribe_config_carries_pipeline_keys(tmp_path):
    fake = FakeTranscriber()
    cfg = load_config(evaluation.EvalConfig, CONFIG, [
        f"librispeech_root={LIBRISPEECH_ROOT}", "splits=[test-clean]", f"output={tmp_path}/{{run_id}}",
        "history=", "run_id=abc", "model=/models/x", "inference.num_actors=3", "storage_options.region=eu"])
    evaluation.evaluate(cfg, transcribe=fake)
    tc = fake.calls[0]
    assert type(tc).__name__ == "TranscribeConfig" and tc.model == "/models/x" and tc.inference.num_actors == 3
    assert tc.output == f"{tmp_path}/abc/predictions/test-clean" and tc.storage_options == {"region": "eu"}
    assert Path(tc.manifest) == LIBRISPEECH_ROOT / "test-clean"


# ---------------------------------------------------------------- real Ray pipeline (tiny random model)
# decode.num_cpus=0.5 leaves room for the model actor and finalize tasks on the 2-CPU test Ray.
PIPELINE_SETS = ["decode.num_cpus=0.5", "inference.cpus_per_actor=1"]


def _hypotheses(pred_dir) -> dict[str, str]:
    rows = pq.read_table(str(pred_dir), columns=["id", "text"]).to_pylist()
    return {r["id"]: r["text"] or "" for r in rows}


def test_real_pipeline_two_runs_trend_then_gate(ray_session, tmp_path, tiny_ctc_dir, capsys):
    base = _argv(tmp_path, "r1", model=tiny_ctc_dir)
    base += [x for s in PIPELINE_SETS for x in ("--set", s)]
    assert evaluation.main(base) == 0
    run = tmp_path / "runs" / "r1"
    summary = json.loads((run / "summary.json").read_text())
    # WER from the references (trans.txt) and the pipeline's own Parquet, computed with jiwer here.
    refs = fixture_transcripts()
    for split in ("dev-clean", "test-clean"):
        hyps = _hypotheses(run / "predictions" / split)
        ids = sorted(u for u, v in refs.items() if v[0] == split)
        assert sorted(hyps) == ids
        expected = jiwer.wer([refs[u][2] for u in ids], [" ".join(hyps[u].upper().split()) for u in ids])
        assert summary["splits"][split]["wer"] == expected
        assert summary["splits"][split]["real_time_factor"] > 0 and summary["splits"][split]["audio_s_per_s"] > 0
    assert summary["splits"]["dev-clean"]["audio_hours"] == pytest.approx((5.86 + 13.34) / 3600, abs=1e-4)
    assert len(summary["checkpoint_sha256"]) == 64
    utts = pd.read_parquet(run / "utterances.parquet")
    assert sorted(utts["id"]) == sorted(refs) and set(utts["split"]) == {"dev-clean", "test-clean"}
    for png in ("wer_per_split.png", "wer_trend.png"):
        assert_nontrivial_png((run / "plots" / png).read_bytes())
    assert "## Worst utterances" in (run / "report.md").read_text()

    # Same model again: a two-point trend, and no regression.
    base[base.index("run_id=r1")] = "run_id=r2"
    assert evaluation.main(base) == 0
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["run_id"] for h in history] == ["r1", "r2"]
    assert history[0]["splits"] == history[1]["splits"]  # same checkpoint, same audio -> same numbers

    # A previous run that was much better: this (random-weight) model now regresses on it.
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write(json.dumps({"run_id": "good", "timestamp": "t", "splits": {"test-clean": {"wer": 0.05}}}) + "\n")
    base[base.index("run_id=r2")] = "run_id=r3"
    assert evaluation.main(base + ["--set", "splits=[test-clean]"]) == 1
    err = capsys.readouterr().err
    wer = summary["splits"]["test-clean"]["wer"]
    assert f"test-clean: WER {wer:.4f}" in err and "previous run good WER 0.0500" in err


def test_real_pipeline_s3_root_output_and_history(ray_session, s3_server, tiny_ctc_dir, capsys):
    s3 = s3_server
    root = s3.upload_dir(LIBRISPEECH_ROOT / "test-clean", "evalcorpus", "LibriSpeech/test-clean")
    root = root.rsplit("/", 1)[0]
    s3.create_bucket("evalout")
    s3.put("evalout", "nightly/history.jsonl",
           json.dumps({"run_id": "old", "timestamp": "t", "splits": {"dev-other": {"wer": 0.1}}}) + "\n")
    sets = [f"librispeech_root={root}", "output=s3://evalout/nightly/{run_id}", "run_id=s1",
            "history=s3://evalout/nightly/history.jsonl", f"model={tiny_ctc_dir}",
            f"storage_options={json.dumps(s3.storage_options)}", *PIPELINE_SETS]
    assert evaluation.main(["--config", str(CONFIG)] + [x for s in sets for x in ("--set", s)]) == 0
    body = s3.client().get_object(Bucket="evalout", Key="nightly/history.jsonl")["Body"].read().decode()
    assert [json.loads(line)["run_id"] for line in body.splitlines()] == ["old", "s1"]
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="evalout", Prefix="nightly/s1/")["Contents"]}
    for k in ("summary.json", "report.md", "utterances.parquet", "plots/wer_per_split.png", "plots/wer_trend.png"):
        assert f"nightly/s1/{k}" in keys
    png = s3.client().get_object(Bucket="evalout", Key="nightly/s1/plots/wer_trend.png")["Body"].read()
    assert_nontrivial_png(png)
    summary = json.loads(s3.client().get_object(Bucket="evalout", Key="nightly/s1/summary.json")["Body"].read())
    assert list(summary["splits"]) == ["test-clean"] and summary["splits"]["test-clean"]["n_utts"] == 1
    assert s3.secret not in json.dumps(summary)


@pytest.mark.slow
def test_ray_job_submit_nightly_gate(ray_head_cluster, tmp_path, tiny_ctc_dir):
    cluster = ray_head_cluster
    ray_bin = str(Path(cluster.env["PATH"].split(":")[0]) / "ray")
    repo = Path(__file__).resolve().parents[1]
    history = tmp_path / "history.jsonl"

    def submit(sub_id, *sets):
        cmd = [ray_bin, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", sub_id,
               "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": [
                   ".git", ".venv", "data", "outputs", "training/work", "**/__pycache__", ".pytest_cache"]}),
               "--", "python", "jobs/evaluate_librispeech.py", "--config", "configs/nightly_librispeech.yaml",
               "--set", f"librispeech_root={LIBRISPEECH_ROOT}", "--set", f"output={tmp_path}/{{run_id}}",
               "--set", f"history={history}", "--set", f"model={tiny_ctc_dir}", "--set", "splits=[test-clean]",
               *[x for s in PIPELINE_SETS + list(sets) for x in ("--set", s)]]
        deadline = time.monotonic() + 90
        while True:  # right after `ray start` the job agent may not be up yet
            proc = subprocess.run(cmd, cwd=repo, env=cluster.env, capture_output=True, text=True, timeout=400)
            if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
                return proc.returncode, proc.stdout + proc.stderr
            time.sleep(3)

    rc, log = submit(f"eval-ok-{tmp_path.name}", "run_id=j1")
    assert rc == 0 and f"Job 'eval-ok-{tmp_path.name}' succeeded" in log and "gate passed" in log, log[-4000:]
    assert (tmp_path / "j1" / "report.md").is_file()

    with open(history, "a") as f:  # pretend the previous night was far better
        f.write(json.dumps({"run_id": "great", "timestamp": "t", "splits": {"test-clean": {"wer": 0.01}}}) + "\n")
    rc, log = submit(f"eval-bad-{tmp_path.name}", "run_id=j2")
    assert rc != 0 and f"Job 'eval-bad-{tmp_path.name}' failed" in log, log[-4000:]
    assert "test-clean: WER" in log and "previous run great WER 0.0100" in log
    assert [json.loads(x)["run_id"] for x in history.read_text().splitlines()] == ["j1", "great", "j2"]


def test_named_manifests_instead_of_librispeech_root(tmp_path):
    """The demo's way in: {set name: manifest}, each scored as its own split."""
    argv = _argv(tmp_path, "m1", librispeech_root="") + [
        "--set", f"manifests={{only-dev: {LIBRISPEECH_ROOT / 'dev-clean'}}}"]
    fake = FakeTranscriber(drop_last_word)
    assert evaluation.main(argv, transcribe=fake) == 0
    assert [Path(c.manifest).name for c in fake.calls] == ["dev-clean"]
    summary = json.loads((tmp_path / "runs" / "m1" / "summary.json").read_text())
    assert list(summary["splits"]) == ["only-dev"]
    assert summary["splits"]["only-dev"]["wer"] == _expected_wer("dev-clean", drop_last_word)[0]


def test_librispeech_root_and_manifests_are_exclusive(tmp_path):
    argv = _argv(tmp_path, "m2") + ["--set", f"manifests={{x: {LIBRISPEECH_ROOT / 'dev-clean'}}}"]
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(evaluation.EvalConfig, CONFIG, argv[3::2])


def test_beam_jobs_score_greedy_and_beam_from_one_job():
    """Rows of a beam job carry text_greedy too: each split gets both WERs, on the same frames."""
    scored = pd.DataFrame({"split": ["a", "a", "b"], "reference": ["THE CAT SAT", "A DOG", "ONE TWO"],
                           "text_greedy": ["THE KAT SAT", "A DOG", None]})
    assert evaluation.greedy_wers(scored) == {"a": pytest.approx(1 / 5)}  # split b was decoded greedily
    assert evaluation.greedy_wers(scored.drop(columns="text_greedy")) == {}
