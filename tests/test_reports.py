"""Report, plots, history and gate on synthetic tables (no Ray)."""
import io
import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd

from sew_pipeline import metrics, reports


def assert_nontrivial_png(data: bytes, min_px: int = 100):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.shape[0] >= min_px and img.shape[1] >= min_px
    # Not a blank canvas: many distinct colours and real variance.
    flat = img.reshape(-1, img.shape[-1])
    assert len(np.unique(flat, axis=0)) > 10
    assert float(img[..., :3].std()) > 0.02


def _run(run_id, wers):
    return {"run_id": run_id, "timestamp": f"2025-01-0{run_id[-1]}T00:00:00Z",
            "splits": {s: {"wer": w, "n_utts": 1} for s, w in wers.items()}}


def test_gate_passes_within_margin_and_fails_beyond():
    history = [_run("r1", {"dev-clean": 0.10, "test-clean": 0.20})]
    assert reports.check_gate({"dev-clean": 0.104, "test-clean": 0.19}, history, None, 0.005) == []
    fails = reports.check_gate({"dev-clean": 0.12, "test-clean": 0.19}, history, None, 0.005)
    assert [(f.split, f.wer, f.reference_wer) for f in fails] == [("dev-clean", 0.12, 0.10)]
    msg = fails[0].message
    assert "dev-clean" in msg and "0.1200" in msg and "0.1000" in msg and "previous run r1" in msg


def test_gate_uses_latest_run_having_the_split_and_baseline():
    history = [_run("r1", {"dev-clean": 0.05, "dev-other": 0.30}), _run("r2", {"dev-clean": 0.20})]
    # dev-clean compares with r2 (0.20), dev-other with r1 (0.30); baseline catches dev-clean.
    fails = reports.check_gate({"dev-clean": 0.21, "dev-other": 0.30}, history, {"dev-clean": 0.08}, 0.02)
    assert [(f.split, f.reference, f.reference_wer) for f in fails] == [("dev-clean", "baseline", 0.08)]


def test_gate_zero_margin_and_no_references():
    assert reports.check_gate({"x": 0.5}, [], None, 0.0) == []
    assert len(reports.check_gate({"x": 0.5}, [_run("r1", {"x": 0.49})], None, 0.0)) == 1


def test_split_wers_accepts_summary_history_and_plain_mapping():
    assert reports.split_wers({"a": 0.1}) == {"a": 0.1}
    assert reports.split_wers({"splits": {"a": {"wer": 0.2, "cer": 0.1}}}) == {"a": 0.2}


def test_history_append_roundtrip(tmp_path):
    uri = str(tmp_path / "hist" / "history.jsonl")
    assert reports.read_history(uri) == []
    reports.append_history(uri, _run("r1", {"a": 0.1}))
    runs = reports.append_history(uri, _run("r2", {"a": 0.2}))
    assert [r["run_id"] for r in runs] == ["r1", "r2"]
    lines = (tmp_path / "hist" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["r1", "r2"]


def test_history_record_keeps_split_metrics_only():
    summary = {"run_id": "r", "timestamp": "t", "model": "m", "checkpoint_sha256": "h",
               "splits": {"a": {"wer": 0.1, "cer": 0.05, "n_utts": 3, "n_words": 9, "real_time_factor": 0.1}}}
    rec = reports.history_record(summary)
    assert rec["splits"] == {"a": {"wer": 0.1, "cer": 0.05, "n_utts": 3, "n_words": 9}}
    assert rec["model"] == "m" and rec["run_id"] == "r"


def test_plots_are_nontrivial_pngs():
    splits = {"dev-clean": {"wer": 0.1, "wer_whisper": 0.08}, "test-clean": {"wer": 0.3, "wer_whisper": 0.25}}
    assert_nontrivial_png(reports.plot_wer_per_split(splits))
    history = [_run("r1", {"dev-clean": 0.1, "test-clean": 0.3}), _run("r2", {"dev-clean": 0.12})]
    assert_nontrivial_png(reports.plot_trend(history))


def test_alignment_text_marks_operations():
    ref, hyp, ops = reports.alignment_text("A B C D", "A C D E").splitlines()
    assert ref.split() == ["REF:", "A", "B", "C", "D", "*"]
    assert hyp.split() == ["HYP:", "A", "*", "C", "D", "E"]
    assert ops.split() == ["D", "I"]
    assert reports.alignment_text("A B", "A X").splitlines()[-1].split() == ["S"]
    assert "I" in reports.alignment_text("", "A B").splitlines()[-1]


def test_worst_utterances_order_and_skip_perfect():
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "reference": ["X Y", "X Y Z W", "X", "X Y"],
                       "hypothesis": ["X Y", "Q Y Z W", "Q", "Q R"], "split": "s", "speaker": "1"})
    worst = reports.worst_utterances(metrics.score_frame(df), 10)
    # d and c both have WER 1.0; d has 2 errors so it comes first; a is perfect and left out.
    assert list(worst["id"]) == ["d", "c", "b"]
    assert list(reports.worst_utterances(metrics.score_frame(df), 1)["id"]) == ["d"]


def test_write_report_writes_markdown_and_pngs(tmp_path):
    df = pd.DataFrame({"id": ["a", "b"], "reference": ["THE CUT ON HIS CHEST", "IT WAS"],
                       "hypothesis": ["THE CAT ON CHEST", "IT WAS"], "split": ["dev-clean", "test-clean"],
                       "speaker": ["1272", "1995"]})
    scored = metrics.score_frame(df)
    splits = metrics.aggregate(scored, "split").set_index("split").to_dict("index")
    summary = {"run_id": "r9", "timestamp": "2025-01-09T00:00:00Z", "model": "demo", "checkpoint_sha256": "abc",
               "splits": splits, "overall": metrics.corpus_scores(scored), "gate": {"max_wer_increase": 0.01}}
    fail = reports.GateFailure("dev-clean", 0.4, 0.1, "previous run r8", 0.01)
    uris = reports.write_report(str(tmp_path / "out"), summary, scored, [_run("r8", {"dev-clean": 0.1})], [fail])
    md = (tmp_path / "out" / "report.md").read_text()
    for rel in ("plots/wer_per_split.png", "plots/wer_trend.png"):
        assert f"]({rel})" in md
        assert_nontrivial_png((tmp_path / "out" / rel).read_bytes())
    assert "FAILED" in md and fail.message in md
    assert "### a (dev-clean, speaker 1272): WER 40.00%" in md  # 1 sub + 1 del over 5 words
    assert "REF: THE CUT ON HIS CHEST" in md
    assert "### b" not in md  # perfect utterance is not among the worst
    assert "| dev-clean | 1 | 5 | 40.00 |" in md
    assert set(uris) == {"report.md", "plots/wer_per_split.png", "plots/wer_trend.png"}


def test_split_table_shows_greedy_wer_beside_a_beam_jobs_wer():
    from sew_pipeline.reports import _split_table
    beam = {"s": {"n_utts": 2, "n_words": 9, "wer": 0.027, "cer": 0.01, "wer_greedy": 0.1676}}
    header, _, row = _split_table(beam)
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["WER %"] == "2.70" and cells["WER % (greedy)"] == "16.76"
    assert "greedy" not in _split_table({"s": {k: v for k, v in beam["s"].items() if k != "wer_greedy"}})[0]
