"""Beam decoding in the pipeline (decoding.method: beam): the model stage ships only the candidates the search
reads, finalize decodes each item once over its stitched frames, a shipped "-with-lm" folder (demo-ctc's own
language_model/) is found and gives Wav2Vec2ProcessorWithLM's transcripts, and a broken LM is a one-line
error before any actor starts."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch

from sew_pipeline import decoding, metrics
from sew_pipeline.audio import resample
from sew_pipeline.config import TranscribeConfig, load_config
from sew_pipeline.models import FeatureExtractor, SEWForCTC
from sew_pipeline.postprocess import Finalizer
from sew_pipeline.predictors import CTCPredictor, DecodeStage
from sew_pipeline.schema import CTC_SCHEMA, PREDICTION_SCHEMA
from sew_pipeline.spec import resolve

pytest.importorskip("kenlm", reason="beam decoding needs kenlm (make test installs it)")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sew_pipeline/assets/models/demo-ctc"
CORPUS = REPO / "sew_pipeline/assets/demo_corpus"
ROWS = [json.loads(x) for x in (CORPUS / "manifest.jsonl").read_text().splitlines() if x.strip()]


def _cfg(*sets: str) -> TranscribeConfig:
    return load_config(TranscribeConfig, None, ["manifest=unused", "output=unused", "model=demo-ctc", *sets])


def _manifest(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"id": r["id"], "audio_uri": str(CORPUS / r["audio_filepath"]), "offset_s": None,
                                  "duration_s": None, "text": r["text"], "split": None, "speaker": None}
                                 for r in rows])


def _stages(cfg: TranscribeConfig, rows: list[dict]) -> tuple[pa.Table, pa.Table]:
    spec = resolve(cfg.model)
    decoder = decoding.resolve(cfg.decoding, spec.uri, dict(spec.vocab))
    chunks = DecodeStage(cfg, spec)(_manifest(rows))
    preds = CTCPredictor(cfg, spec)(chunks)
    return preds, Finalizer(spec, "ctc", "test", decoder=decoder)(preds.select(PREDICTION_SCHEMA.names))


def _wer(refs: list[str], hyps: list[str]) -> float:
    counts = metrics.word_counts(refs, [h or "" for h in hyps])
    return sum(c.substitutions + c.deletions + c.insertions for c in counts) / sum(c.ref_len for c in counts)


def test_pipeline_beam_rows_equal_wav2vec2_processor_with_lm_on_the_shipped_folder():
    from transformers import Wav2Vec2ProcessorWithLM
    pytest.importorskip("pyctcdecode", reason="the parity reference (make test installs it)")
    rows = ROWS[:10]
    preds, out = _stages(_cfg("decoding.method=beam"), rows)
    assert out.schema == CTC_SCHEMA
    got = {r["id"]: r for r in out.to_pylist()}
    processor = Wav2Vec2ProcessorWithLM.from_pretrained(DEMO)  # the shipped folder, unchanged
    model, fe = SEWForCTC.from_pretrained(DEMO).eval(), FeatureExtractor.from_pretrained(DEMO)
    audio_s = 0.0
    for r in rows:
        x, sr = sf.read(CORPUS / r["audio_filepath"], dtype="float32")
        audio_s += len(x) / sr
        with torch.inference_mode():
            logits = model(torch.as_tensor(fe([resample(x, sr, 16000)])["input_values"])).logits[0].numpy()
        want = processor.decode(logits, beam_width=50, output_word_offsets=True)
        row = got[r["id"]]
        assert row["decoder"] == "beam" and row["text"] == want.text, r["id"]
        assert [(w["word"], w["start_s"], w["end_s"]) for w in row["words"]] == \
            [(o["word"], round(o["start_offset"] * 0.02, 3), round(o["end_offset"] * 0.02, 3)) for o in want.word_offsets]
        assert row["text_greedy"] == processor.tokenizer.decode(logits.argmax(-1))
        assert len(row["word_confidence"]) == len(row["words"]) and all(0 < c <= 1 for c in row["word_confidence"])
    # only the candidates leave the model stage: well under the 6.4 KB/s of dense float32 log-probs
    per_s = sum(len(b) for b in preds.column("logp").to_pylist()) / audio_s
    assert per_s < 1000, per_s
    refs = [r["text"] for r in rows]
    assert _wer(refs, [got[r["id"]]["text"] for r in rows]) < _wer(refs, [got[r["id"]]["text_greedy"] for r in rows])


def test_greedy_rows_keep_their_columns_and_leave_beam_columns_null():
    preds, out = _stages(_cfg(), ROWS[:2])
    assert preds.column("logp").null_count == preds.num_rows  # nothing extra shipped for greedy
    for row in out.to_pylist():
        assert row["decoder"] == "greedy" and row["text"]
        assert row["text_greedy"] is None and row["word_confidence"] is None and row["nbest"] is None


def test_long_item_is_decoded_once_over_its_stitched_windows_with_n_best():
    """Three utterances joined with pauses, cut into 2 s windows: one row, LM-corrected across window edges."""
    parts, refs = [], []
    for r in ROWS[:3]:
        x, sr = sf.read(CORPUS / r["audio_filepath"], dtype="float32")
        parts += [resample(x, sr, 16000), np.zeros(8000, np.float32)]
        refs.append(r["text"])
    path = Path(__file__).parent / "data" / "_joined_tmp.wav"
    sf.write(path, np.concatenate(parts), 16000)
    try:
        row = {"id": "joined", "audio_filepath": str(path), "text": " ".join(refs)}
        _, out = _stages(_cfg("decoding.method=beam", "decoding.n_best=3", "window_s=2", "overlap_s=0.5"), [row])
    finally:
        path.unlink()
    (got,) = out.to_pylist()
    assert got["num_chunks"] >= 5 and got["error_type"] is None
    nbest = got["nbest"]  # up to n_best: beams beyond beam_prune_logp of the best are gone
    assert 2 <= len(nbest) <= 3 and nbest[0]["text"] == got["text"] and len({h["text"] for h in nbest}) == len(nbest)
    assert [h["score"] for h in nbest] == sorted((h["score"] for h in nbest), reverse=True)
    assert _wer([row["text"]], [got["text"]]) < _wer([row["text"]], [got["text_greedy"]])
    starts = [w["start_s"] for w in got["words"]]
    assert starts == sorted(starts) and starts[-1] > 6.0  # times on the file's timeline, across windows


def test_a_broken_or_missing_lm_is_a_clear_error_naming_the_key(tmp_path):
    spec = resolve("demo-ctc")

    def check(*sets):
        return decoding.resolve(_cfg("decoding.method=beam", *sets).decoding, spec.uri, dict(spec.vocab))
    assert check().lm.endswith("language_model/lm.arpa")  # the checkpoint's own LM is found
    with pytest.raises(decoding.DecodingError, match=r"decoding.lm .*nope.arpa: no such file"):
        check(f"decoding.lm={tmp_path / 'nope.arpa'}")
    (tmp_path / "bad.arpa").write_text("this is not a language model\n")
    with pytest.raises(decoding.DecodingError, match="decoding.lm .*neither an ARPA file"):
        check(f"decoding.lm={tmp_path / 'bad.arpa'}")
    with pytest.raises(decoding.DecodingError, match="decoding.lexicon .*: no such file"):
        check(f"decoding.lexicon={tmp_path / 'words.txt'}")
    # a job says so in seconds, in one line, before Ray starts
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "jobs/transcribe_corpus.py"), "--set",
                           f"manifest={CORPUS / 'manifest.jsonl'}", "--set", f"output={tmp_path / 'out'}",
                           "--set", "decoding.method=beam", "--set", f"decoding.lm={tmp_path / 'nope.arpa'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and time.monotonic() - t0 < 60
    assert "decoding.lm" in proc.stderr and "no such file" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_transcribe_job_with_beam_decoding_every_id_once(ray_session, tmp_path):
    from sew_pipeline import ray_pipeline
    from sew_pipeline.results import read_results
    cfg = load_config(TranscribeConfig, None, [f"manifest={CORPUS / 'manifest.jsonl'}", f"output={tmp_path / 'out'}",
                                               "model=demo-ctc", "window_s=2", "overlap_s=0.5",
                                               "decoding.method=beam", "finalize.num_cpus=0.5"])
    ray_pipeline.transcribe(cfg)
    rows = read_results(str(tmp_path / "out")).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in ROWS)
    got = {r["id"]: r for r in rows}
    refs = [r["text"] for r in ROWS]
    beam_wer = _wer(refs, [got[r["id"]]["text"] for r in ROWS])
    greedy_wer = _wer(refs, [got[r["id"]]["text_greedy"] for r in ROWS])
    assert beam_wer < greedy_wer - 0.05, (beam_wer, greedy_wer)
    card = json.loads((DEMO / "eval.json").read_text())["language_model"]  # whole-utterance figures of the card
    assert (card["demo_corpus_wer_greedy"], card["demo_corpus_wer_beam"]) == (0.1676, 0.027)
    assert beam_wer <= card["demo_corpus_wer_beam"] + 0.05, (beam_wer, card)  # 2 s windows, stitched: close


@pytest.mark.parametrize("vocab", [32, 300])
def test_packed_frames_are_exactly_the_candidates_the_search_reads(vocab):
    """Lossless for the search, also when a frame has more candidates than a byte counts (a large vocabulary)."""
    from sew_pipeline.beam import BeamSearch, log_probs
    logp = log_probs(np.random.default_rng(0).normal(0, 1, (40, vocab)).astype(np.float32))
    want = BeamSearch([""] * vocab, token_min_logp=-9.0).candidates(logp)
    got = decoding.unpack_frames(decoding.pack_frames(logp, -9.0))
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    np.testing.assert_allclose([x for _, v in got for x in v], [x for _, v in want for x in v], atol=1e-6)
