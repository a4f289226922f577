"""segmentation.method: vad through the Ray jobs: call archives in, segment + conversation rows out, exactly once
(also when a call leaves its decode task in slices and meets in the merge), resumable, exportable."""
from __future__ import annotations

import json

import soundfile as sf

from sew_pipeline.config import LabelConfig, TranscribeConfig, load_config
from sew_pipeline.results import read_results
from tests.support.calls import SR, demo_utterances, make_call, silent_call, turn_report


def _calls(tmp_path):
    utts = demo_utterances()
    calls = {"call-a": make_call(utts, 90, seed=11), "call-b": make_call(utts, 45, seed=12, silent=(0,)),
             "quiet": silent_call(30, seed=13)}
    for name, call in calls.items():
        sf.write(tmp_path / f"{name}.wav", call.audio, SR, subtype="ULAW")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    entries = [*calls, "corrupt"]
    (tmp_path / "calls.jsonl").write_text("".join(json.dumps({"id": i, "audio_filepath": f"{i}.wav"}) + "\n"
                                                  for i in entries))
    return calls


def test_transcribe_calls_with_vad_every_call_once_resumable_and_exported(ray_session, tmp_path):
    from jobs.export_conversations import main as export
    from sew_pipeline import ray_pipeline
    calls = _calls(tmp_path)
    sets = [f"manifest={tmp_path / 'calls.jsonl'}", f"output={tmp_path / 'out'}", "model=demo-ctc",
            "segmentation.method=vad", "decode.channels=split",
            "decode.slice_mb=0.5"]  # ~16 s of segments per slice: call-a leaves in several and meets in the merge
    result = ray_pipeline.transcribe(load_config(TranscribeConfig, None, sets))
    assert result.summary["ids_written"] == 4 and result.summary["errors_by_type"] == {"unsupported_format": 1}
    assert 0.3 < result.summary["speech_fraction"] < 0.6
    rows = read_results(str(tmp_path / "out")).to_pylist()
    conv = {r["id"]: r for r in rows if r["level"] == "conversation"}
    assert sorted(conv) == ["call-a", "call-b", "corrupt", "quiet"]
    assert [r["id"] for r in rows if r["level"] == "conversation"].count("call-a") == 1
    for name, call in calls.items():
        assert turn_report(call, conv[name]["turns"])["order_matches"]
        segs = [r for r in rows if r["id"] == name and r["level"] == "segment"]
        assert len({(r["channel"], r["segment_index"]) for r in segs}) == len(segs) == conv[name]["num_chunks"]
    again = ray_pipeline.transcribe(load_config(TranscribeConfig, None, sets))  # resume: nothing left to do
    assert again.summary["skipped_already_done"] == 4 and again.summary["ids_written"] == 0
    assert export([str(tmp_path / "out"), "--to", str(tmp_path / "text"), "--format", "vtt"]) == 0
    assert sorted(p.name for p in (tmp_path / "text").iterdir()) == [f"{i}.vtt" for i in sorted(conv)]
    vtt = (tmp_path / "text/call-a.vtt").read_text()
    assert vtt.startswith("WEBVTT") and vtt.count("-->") == len(conv["call-a"]["turns"])


def test_label_calls_with_vad(ray_session, tmp_path):
    from sew_pipeline import ray_pipeline
    calls = _calls(tmp_path)
    cfg = load_config(LabelConfig, None, [f"manifest={tmp_path / 'calls.jsonl'}", f"output={tmp_path / 'labels'}",
                                          "segmentation.method=vad"])
    result = ray_pipeline.label(cfg)
    assert result.summary["ids_written"] == 4
    rows = read_results(str(tmp_path / "labels")).to_pylist()
    for name, call in calls.items():
        mine = [r for r in rows if r["id"] == name]
        assert sorted(r["level"] for r in mine if r["level"] != "segment") == ["channel", "channel", "conversation"]
        speech = {r["channel"]: r["speech_s"] for r in mine if r["level"] == "channel"}
        for c in (0, 1):
            truth = call.speech_fraction(c) * call.duration_s
            assert abs(speech[c] - truth) <= 0.15 * truth + 1.0
    assert [r["error_type"] for r in rows if r["id"] == "corrupt"] == ["unsupported_format"]
