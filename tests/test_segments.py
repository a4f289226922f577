"""Call segmentation (segmentation.method: vad) without Ray: the streaming VAD, segment and conversation rows
against generated calls' ground truth, label aggregates weighted by speech, edge calls, exports."""
from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import soxr

from sew_pipeline import conversation, decoding, vad
from sew_pipeline.config import ConfigError, LabelConfig, TranscribeConfig, load_config
from sew_pipeline.metrics import error_rate, word_counts
from sew_pipeline.postprocess import Finalizer
from sew_pipeline.predictors import ClassifierPredictor, CTCPredictor, DecodeStage
from sew_pipeline.schema import CTC_SCHEMA, PREDICTION_SCHEMA, to_table
from sew_pipeline.spec import resolve
from tests.support.calls import (SR, channel_hypothesis, channel_reference, demo_utterances, make_call, silent_call,
                                 span_frames, truth_frames, turn_report)
from tests.test_predictors import _manifest, _run_stages

@pytest.fixture(scope="module")
def utterances():
    return demo_utterances()


@pytest.fixture(scope="module")
def call(utterances):
    return make_call(utterances, 120, seed=3)


def _at16k(x: np.ndarray) -> np.ndarray:
    return soxr.resample(x, SR, 16000).astype(np.float32)


def _cfg(cls, model, method, *sets):
    return load_config(cls, None, ["manifest=unused", "output=unused", f"model={model}", "decode.channels=split",
                                   f"segmentation.method={method}", *sets])


def _write_call(path, call, fmt="WAV", subtype="ULAW"):
    sf.write(path, call.audio, SR, format=fmt, subtype=subtype)
    return str(path)


# ------------------------------------------------------------------ the detector
def test_vad_finds_each_partys_speech_and_not_the_other_partys_echo(call):
    for ch in (0, 1):
        x = _at16k(call.audio[:, ch])
        segs = vad.segments(x)
        own, echo_only = truth_frames(call, ch)
        got = span_frames([(s.start / 16000, s.end / 16000) for s in segs], len(own))
        assert got[own].mean() >= 0.93          # recall of speech frames
        assert own[got].mean() >= 0.88          # precision (padding makes some non-speech frames speech)
        assert got[echo_only].mean() <= 0.05    # the far end's echo is not this party speaking
        assert all(a.end <= b.start for a, b in zip(segs, segs[1:]))
        for s in segs:
            assert s.start % 640 == 0 and 0.2 <= (s.end - s.start) / 16000 <= 20.0
            assert np.array_equal(s.audio, x[s.start:s.end])


def test_vad_streams_segments_do_not_depend_on_block_size(call):
    x = _at16k(call.audio[:, 0])
    whole = [(s.start, s.end) for s in vad.segments(x, block=len(x))]
    assert len(whole) >= 10
    for block in (333, 4096, 65536):
        assert [(s.start, s.end) for s in vad.segments(x, block=block)] == whole


def test_long_speech_is_cut_at_its_quietest_point_and_memory_stays_bounded(utterances):
    # a minute of one party talking with only 0.1 s breaths between sentences: one long stretch of speech
    rng = np.random.default_rng(1)
    parts = []
    for x, _ in utterances[:30]:
        parts += [_at16k(x) * 0.1 / np.sqrt(np.mean(x ** 2)), np.zeros(1600, np.float32)]
    x = np.concatenate(parts)[:60 * 16000]
    x = x + 10 ** (-50 / 20) * rng.standard_normal(len(x)).astype(np.float32)
    params = vad.VadParams(max_segment_s=8.0, min_silence_s=2.0)  # no pause ends a segment: only the cuts
    seg, out, peak = vad.StreamSegmenter(params), [], 0
    for i in range(0, len(x), 4096):
        out += seg.push(x[i:i + 4096])
        peak = max(peak, len(seg.buf))
    out += seg.finish()
    lengths = [(s.end - s.start) / 16000 for s in out]
    assert max(lengths) <= 8.0 and sum(lengths) >= 0.95 * len(x) / 16000
    cuts = [a.end for a, b in zip(out, out[1:]) if a.end == b.start]
    assert len(cuts) >= 5  # contiguous pieces of one stretch of speech
    level = 10 * np.log10(np.mean(x ** 2))
    for c in cuts:  # each cut falls in a pause, not mid-word
        assert 10 * np.log10(np.mean(x[c - 320:c + 320] ** 2) + 1e-12) < level - 15
    # never more than the warm-up, or one open segment plus padding and a decision step, plus a block
    assert peak <= max(vad.WARMUP_S, 8.0 + 0.2) * 16000 + (vad.STEP_S * 16000) + 4096 + 640


# ------------------------------------------------------------------ transcribe_corpus rows (stages, no Ray)
@pytest.fixture(scope="module")
def ctc_runs(call, tmp_path_factory):
    path = _write_call(tmp_path_factory.mktemp("calls") / "call.wav", call)
    runs = {}
    for method in ("windows", "vad"):
        cfg = _cfg(TranscribeConfig, "demo-ctc", method)
        _, out = _run_stages(cfg, _manifest([("call", path)]), CTCPredictor, shuffle_seed=4, batch_rows=6)
        runs[method] = out.to_pylist()
    return runs


def _wer(ref: str, hyp: str) -> float:
    [c] = word_counts([ref], [hyp])
    return error_rate(c.hits, c.substitutions, c.deletions, c.insertions)


def test_vad_rows_segments_and_one_conversation_matching_the_calls_turns(call, ctc_runs):
    rows = ctc_runs["vad"]
    convs = [r for r in rows if r["level"] == "conversation"]
    segs = [r for r in rows if r["level"] == "segment"]
    assert len(convs) == 1 and len(segs) + 1 == len(rows)
    conv = convs[0]
    assert conv["error_type"] is None and conv["channel"] == -1 and conv["num_chunks"] == len(segs)
    keys = {(r["channel"], r["segment_index"]) for r in segs}
    assert len(keys) == len(segs)  # each segment exactly once
    assert all(0 <= r["start_s"] < r["end_s"] <= call.duration_s + 1e-6 and r["item_id"] == f"call#c{r['channel']}"
               for r in segs)
    for r in segs:  # word times lie inside their segment, on the file's timeline
        assert all(r["start_s"] - 1e-6 <= w["start_s"] <= w["end_s"] <= r["end_s"] + 0.02 for w in r["words"])
    turns, report = conv["turns"], turn_report(call, conv["turns"])
    assert report["order_matches"]  # who spoke when, in order
    # true turns are whole clips (with the synthesiser's own leading/trailing silence); segments keep 0.2 s padding
    assert report["start_error_s"] < 0.5 and report["end_error_s"] < 0.5
    overlapped = {i for i, t in enumerate(call.turns) for a, b in call.overlaps() if t in (a, b)}
    assert overlapped and all(turns[i]["overlap"] for i in overlapped)
    for c in (0, 1):
        speech = next(s for s in conv["channel_speech"] if s["channel"] == c)
        assert speech["speech_s"] == pytest.approx(call.speech_fraction(c) * call.duration_s, rel=0.15)
        assert speech["segments"] == sum(1 for r in segs if r["channel"] == c)


def test_vad_sends_about_half_the_audio_of_fixed_windows_and_transcribes_no_worse(call, ctc_runs):
    def model_s(rows):
        return sum(r["frames"] - r["padded_frames"] for r in rows if r["level"] in ("item", "segment")) * 0.02
    assert model_s(ctc_runs["vad"]) <= 0.55 * model_s(ctc_runs["windows"])
    for c in (0, 1):
        ref = channel_reference(call, c)
        wer_vad, wer_win = (_wer(ref, channel_hypothesis(ctc_runs[m], c)) for m in ("vad", "windows"))
        assert wer_vad <= wer_win + 0.01, (c, wer_vad, wer_win)


# ------------------------------------------------------------------ label_archive rows
def _pred_row(id_, channel, item_index, index, num, start, end, probs):
    return {"id": id_, "item_id": f"{id_}#c{channel}", "audio_uri": "x.wav", "channel": channel,
            "item_index": item_index, "num_items": 2, "chunk_index": index, "num_chunks": num, "start_s": start,
            "end_s": end, "item_start_s": 0.0, "item_duration_s": 10.0, "keep_start_frame": 0, "keep_end_frame": 0,
            "start_frame": 0, "payload": None if probs is None else np.asarray(probs, "<f4").tobytes(),
            "processing_s": 0.1, "frames": 50, "padded_frames": 0}


def test_label_aggregates_weight_segments_by_their_speech_seconds():
    spec = resolve("demo-kws")
    n = len(spec.labels)
    p_short, p_long = np.full(n, 0.0), np.full(n, 0.0)
    p_short[0], p_short[1] = 0.9, 0.1
    p_long[0], p_long[1] = 0.2, 0.8
    rows = [_pred_row("c", 0, 0, 0, None, 0.0, 1.0, p_short),   # 1 s: label 0
            _pred_row("c", 0, 0, 1, 2, 1.5, 4.5, p_long),       # 3 s: label 1 (a plain mean would say label 0)
            _pred_row("c", 1, 1, 0, 0, 0.0, 0.0, None)]         # channel 1: no speech
    out = Finalizer(spec, "classification", "r", top_k=2, segments=True)(
        pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)).to_pylist()
    levels = [r["level"] for r in out]
    assert levels == ["segment", "segment", "channel", "channel", "conversation"]
    ch0, ch1, conv = out[2], out[3], out[4]
    assert ch0["label"] == spec.labels[1] and ch0["score"] == pytest.approx((0.1 * 1 + 0.8 * 3) / 4)
    assert ch0["speech_s"] == pytest.approx(4.0) and ch0["num_windows"] == 2
    assert ch1["label"] is None and ch1["speech_s"] == 0 and ch1["error_type"] is None
    assert conv["label"] == spec.labels[1] and conv["speech_s"] == pytest.approx(4.0)
    assert [(t["channel"], t["label"]) for t in conv["turns"]] == [(0, spec.labels[1])]  # one turn: both segments
    assert conv["channel_speech"] == [{"channel": 0, "speech_s": 4.0, "segments": 2},
                                      {"channel": 1, "speech_s": 0.0, "segments": 0}]


def test_label_archive_stages_label_each_segment(call, tmp_path):
    path = _write_call(tmp_path / "call.wav", call)
    cfg = _cfg(LabelConfig, "demo-kws", "vad")
    _, out = _run_stages(cfg, _manifest([("call", path)]), ClassifierPredictor, shuffle_seed=1)
    rows = out.to_pylist()
    segs = [r for r in rows if r["level"] == "segment"]
    assert sorted(r["level"] for r in rows if r["level"] != "segment") == ["channel", "channel", "conversation"]
    assert len(segs) >= 20 and all(r["label"] in resolve("demo-kws").labels and len(r["top_k"]) == 3 for r in segs)
    conv = next(r for r in rows if r["level"] == "conversation")
    assert turn_report(call, conv["turns"])["order_matches"]


# ------------------------------------------------------------------ edge calls
@pytest.mark.parametrize("task", ["ctc", "classification"])
def test_edge_calls_give_the_documented_rows(utterances, tmp_path, task):
    one_silent = make_call(utterances, 40, seed=2, silent=(1,))
    quiet = silent_call(40, seed=2)
    buf = io.BytesIO()
    sf.write(buf, make_call(utterances, 40, seed=6).audio, SR, format="FLAC")
    corrupt = bytearray(buf.getvalue())  # decodes cleanly for 80 % of its bytes, then garbage (as a torn upload)
    at = int(len(corrupt) * 0.8)
    corrupt[at:at + 3000] = bytes((b * 7 + 13) % 256 for b in corrupt[at:at + 3000])
    (tmp_path / "corrupt.flac").write_bytes(bytes(corrupt))
    manifest = _manifest([("one_silent", _write_call(tmp_path / "a.wav", one_silent)),
                          ("silence", _write_call(tmp_path / "b.wav", quiet)),
                          ("corrupt", str(tmp_path / "corrupt.flac")), ("missing", str(tmp_path / "none.wav"))])
    cls, model, pred = ((TranscribeConfig, "demo-ctc", CTCPredictor) if task == "ctc"
                        else (LabelConfig, "demo-kws", ClassifierPredictor))
    _, out = _run_stages(_cfg(cls, model, "vad"), manifest, pred, shuffle_seed=2)
    rows = out.to_pylist()
    conv = {r["id"]: r for r in rows if r["level"] == "conversation"}
    assert sorted(conv) == ["corrupt", "missing", "one_silent", "silence"]  # one per id, none lost
    assert conv["corrupt"]["error_type"] == "unreadable" and conv["missing"]["error_type"] == "missing"
    assert [r["id"] for r in rows].count("corrupt") == 1 and [r["id"] for r in rows].count("missing") == 1
    # one silent channel: only the other party's segments; its speech time says 0 s
    segs = [r for r in rows if r["id"] == "one_silent" and r["level"] == "segment"]
    assert segs and {r["channel"] for r in segs} == {0}
    assert {t["channel"] for t in conv["one_silent"]["turns"]} == {0}
    assert [(s["channel"], s["segments"]) for s in conv["one_silent"]["channel_speech"]][1] == (1, 0)
    # all silence: no segment rows, a conversation without turns, and no error
    silence = [r for r in rows if r["id"] == "silence"]
    assert conv["silence"]["turns"] == [] and conv["silence"]["speech_s"] == 0 and conv["silence"]["error"] is None
    assert [r["level"] for r in silence] == (["conversation"] if task == "ctc" else ["channel", "channel", "conversation"])
    if task == "classification":
        assert all(r["label"] is None for r in silence)


def test_segmentation_keys_are_checked():
    cfg = _cfg(TranscribeConfig, "demo-ctc", "vad", "segmentation.max_segment_s=12")
    assert cfg.segmentation.method == "vad" and cfg.segmentation.params().max_segment_s == 12
    with pytest.raises(ConfigError, match="segmentation.method"):
        _cfg(TranscribeConfig, "demo-ctc", "energy")
    with pytest.raises(ConfigError, match="segmentation.max_segment_s"):
        _cfg(TranscribeConfig, "demo-ctc", "vad", "segmentation.max_segment_s=0.3")
    from sew_pipeline.evaluation import EvalConfig
    with pytest.raises(ConfigError, match="segmentation.method"):
        load_config(EvalConfig, None, ["librispeech_root=x", "output=y", "segmentation.method=vad"])


# ------------------------------------------------------------------ exports
def _conversation_row(task="ctc"):
    turns = [{"channel": 0, "start_s": 0.52, "end_s": 2.0, "text": "HELLO THERE", "label": None, "overlap": False},
             {"channel": 1, "start_s": 1.9, "end_s": 3661.25, "text": "HI --> YOU", "label": None, "overlap": True}]
    return {"id": "calls/2026/a b", "audio_uri": "s3://b/a.wav", "duration_s": 3700.0, "error_type": None,
            "error": None, "turns": turns, "level": "conversation",
            "channel_speech": [{"channel": 0, "speech_s": 1.48, "segments": 1},
                               {"channel": 1, "speech_s": 3659.35, "segments": 9}]}


def test_webvtt_and_text_exports_read_as_a_conversation():
    row = _conversation_row()
    vtt = conversation.to_webvtt(row, ["agent", "customer"]).splitlines()
    assert vtt[0] == "WEBVTT" and vtt[1] == ""
    cues = [i for i, line in enumerate(vtt) if "-->" in line and line[0].isdigit()]
    assert len(cues) == 2
    assert vtt[cues[0]] == "00:00:00.520 --> 00:00:02.000" and vtt[cues[0] + 1] == "<v agent>HELLO THERE"
    assert vtt[cues[1]] == "00:00:01.900 --> 01:01:01.250" and vtt[cues[1] + 1] == "<v customer>HI -> YOU"
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", vtt[i]) for i in cues)
    text = conversation.to_text(row).splitlines()
    assert text[2] == "[00:00:00.520 - 00:00:02.000] channel 0: HELLO THERE"
    assert text[3].endswith("channel 1: HI --> YOU  (overlap)")
    assert "channel 1 3659.3 s" in text[1] or "channel 1 3659.4 s" in text[1]


def test_export_command_writes_one_file_per_call_and_format(tmp_path):
    import pyarrow.parquet as pq
    from jobs.export_conversations import main
    out = tmp_path / "out"
    out.mkdir()
    rows = [{**_conversation_row(), "channel": -1, "item_id": "x"}, {"id": "seg", "level": "segment", "channel": 0}]
    pq.write_table(to_table(rows, CTC_SCHEMA), out / "part-r-0.parquet")
    assert main([str(out), "--to", str(tmp_path / "text"), "--speakers", "agent,customer"]) == 0
    assert sorted(p.name for p in (tmp_path / "text").iterdir()) == ["calls_2026_a_b.txt", "calls_2026_a_b.vtt"]
    assert "<v customer>" in (tmp_path / "text/calls_2026_a_b.vtt").read_text()
    empty = tmp_path / "windows"
    empty.mkdir()
    pq.write_table(to_table([{"id": "a", "level": "item"}], CTC_SCHEMA), empty / "part-r-0.parquet")
    assert main([str(empty), "--to", str(tmp_path / "none")]) == 2  # a windows job has no conversations


def test_vad_segments_decode_with_beam_and_lm(utterances, tmp_path):
    call = make_call(utterances, 30, seed=8)
    cfg = _cfg(TranscribeConfig, "demo-ctc", "vad", "decoding.method=beam")
    spec = resolve("demo-ctc")
    decoder = decoding.resolve(cfg.decoding, spec.uri, dict(spec.vocab), {})
    preds = CTCPredictor(cfg)(DecodeStage(cfg)(_manifest([("call", _write_call(tmp_path / "c.wav", call))])))
    rows = Finalizer(spec, "ctc", "r", decoder=decoder, segments=True)(preds.select(PREDICTION_SCHEMA.names)).to_pylist()
    segs = [r for r in rows if r["level"] == "segment"]
    assert segs and all(r["decoder"] == "beam" and r["text_greedy"] is not None for r in segs)
    for c in (0, 1):  # the LM helps here as it does on whole utterances
        ref = channel_reference(call, c)
        beam = channel_hypothesis(segs, c)
        greedy = " ".join(r["text_greedy"] for r in sorted(segs, key=lambda r: r["start_s"]) if r["channel"] == c)
        assert _wer(ref, beam) < _wer(ref, greedy)
    conv = rows[-1]
    assert conv["level"] == "conversation" and " ".join(t["text"] for t in conv["turns"] if t["channel"] == 0) == \
        channel_hypothesis(segs, 0)
