"""Beam decoding in the pipeline: settings resolved once on the driver, frames shipped from the model stage,
one decoder per worker process (no Ray here; the search itself is sew_pipeline.beam).

driver:      resolve(cfg.decoding, model spec) -> DecoderSpec (labels, LM/lexicon URIs, weights), checked
             before any actor starts: a missing or broken LM, or no kenlm, is a one-line UserError.
model stage: pack_frames(log-probs of a window's kept frames) -> bytes: only the tokens the search reads
             (log-prob >= token_min_logp, and each frame's best), ~0.4 KB per audio second instead of 6.4.
finalize:    unpack_frames per window, concatenated in window order, decoded once per item (decode_item).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sew_pipeline import beam, storage
from sew_pipeline.errors import UserError, redact

log = logging.getLogger(__name__)
ARPA_HEAD, BINARY_HEAD = b"\\data\\", b"mmap lm http://kheafield.com/code"
DEFAULT_WEIGHTS = {"alpha": 0.5, "beta": 1.5, "unk_score_offset": -10.0, "score_boundary": True}


class DecodingError(UserError):
    """The decoding section cannot run (a user error: one line, exit 2, before any actor starts)."""


@dataclass(frozen=True)
class DecoderSpec:
    labels: tuple[str, ...]
    lm: str | None                 # KenLM file URI (None: beam search without an LM)
    lexicon: str | None            # unigram list URI (None: the ARPA file's words, or none for a binary)
    alpha: float
    beta: float
    unk_score_offset: float
    score_boundary: bool
    beam_width: int
    beam_prune_logp: float
    token_min_logp: float
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = 10.0
    n_best: int = 1

    def describe(self) -> str:
        lm = f"LM {redact(self.lm)} (alpha {self.alpha:g}, beta {self.beta:g})" if self.lm else "no LM"
        return f"beam {self.beam_width}, {lm}"


# ------------------------------------------------------------------ driver
def resolve(decoding, model_uri: str, vocab: Mapping[str, int], options: Mapping[str, Any] | None = None
            ) -> DecoderSpec | None:
    """The decoder a job runs (None = greedy); every file it names is checked here."""
    if decoding is None or decoding.method == "greedy":
        return None
    fs, root = storage.filesystem(model_uri, options)
    lm, lexicon, attrs = decoding.lm, decoding.lexicon, {}
    lm_dir = f"{root.rstrip('/')}/{beam.LM_DIR}"
    if lm is None and fs.isdir(lm_dir):  # the checkpoint's own language_model/ (Wav2Vec2ProcessorWithLM layout)
        files = {Path(p).name: p for p in fs.ls(lm_dir, detail=False)}
        models = sorted(n for n in files if Path(n).suffix in beam.LM_SUFFIXES)
        if len(models) != 1:
            raise DecodingError(f"model {redact(model_uri)}: {beam.LM_DIR}/ holds {len(models)} KenLM files "
                                f"({', '.join(beam.LM_SUFFIXES)}); expected one (or set decoding.lm)")
        lm = storage.join(model_uri, f"{beam.LM_DIR}/{models[0]}")
        if lexicon is None and "unigrams.txt" in files:
            lexicon = storage.join(model_uri, f"{beam.LM_DIR}/unigrams.txt")
        if "attrs.json" in files:
            attrs = json.loads(storage.read_text(storage.join(model_uri, f"{beam.LM_DIR}/attrs.json"), options))
    if lm is not None:
        _check_lm(lm, options)
    if lexicon is not None and not _exists(lexicon, options):
        raise DecodingError(f"decoding.lexicon {redact(lexicon)}: no such file")
    labels = _labels(model_uri, vocab, options)
    weights = {k: getattr(decoding, k, None) for k in ("alpha", "beta", "unk_score_offset")}
    weights = {k: v if v is not None else attrs.get(k, DEFAULT_WEIGHTS[k]) for k, v in weights.items()}
    return DecoderSpec(labels=tuple(labels), lm=lm, lexicon=lexicon, **weights,
                       score_boundary=bool(attrs.get("score_boundary", True)), beam_width=decoding.beam_width,
                       beam_prune_logp=decoding.beam_prune_logp, token_min_logp=decoding.token_min_logp,
                       hotwords=tuple(decoding.hotwords), hotword_weight=decoding.hotword_weight,
                       n_best=decoding.n_best)


def _labels(model_uri: str, vocab: Mapping[str, int], options) -> list[str]:
    alphabet = storage.join(model_uri, "alphabet.json")
    try:
        if _exists(alphabet, options):
            data = json.loads(storage.read_text(alphabet, options))
            if data.get("is_bpe"):
                raise ValueError("a BPE alphabet")
            labels = list(data["labels"])
        else:
            labels = beam.labels_from_vocab(dict(vocab))
    except (ValueError, KeyError) as exc:
        raise DecodingError(f"decoding.method=beam: model {redact(model_uri)}: {exc} (character alphabets only)")
    if len(labels) != len(vocab):
        raise DecodingError(f"decoding.method=beam: model {redact(model_uri)}: alphabet.json has {len(labels)} "
                            f"labels, the vocabulary {len(vocab)} tokens")
    return labels


def _exists(uri: str, options) -> bool:
    fs, path = storage.filesystem(uri, options)
    return fs.isfile(path)


def _check_lm(uri: str, options) -> None:
    try:
        import kenlm  # noqa: F401
    except ImportError:
        raise DecodingError("decoding.method=beam with an LM needs the kenlm package: "
                            "pip install 'sew-pipeline[lm]'") from None
    if not _exists(uri, options):
        raise DecodingError(f"decoding.lm {redact(uri)}: no such file")
    fs, path = storage.filesystem(uri, options)
    with fs.open(path, "rb") as f:
        head = f.read(256).lstrip()
    if not (head.startswith(ARPA_HEAD) or head.startswith(BINARY_HEAD)):
        raise DecodingError(f"decoding.lm {redact(uri)}: neither an ARPA file (\\data\\ ...) nor a KenLM binary")


# ------------------------------------------------------------------ model stage -> finalize
def pack_frames(logp: np.ndarray, token_min_logp: float) -> bytes:
    """[F, V] log-probs of kept frames -> the candidates the search reads: header (F, id width), then per frame
    its candidate count, all ids (both uint8, uint16 for vocabularies over 256), all log-probs (float32)."""
    keep = beam.candidate_mask(logp, token_min_logp)
    rows, ids = np.nonzero(keep)
    width = 1 if logp.shape[1] <= 256 else 2  # a frame's count can reach the vocabulary size too
    head = np.array([len(logp), width], "<u4").tobytes()
    return (head + keep.sum(axis=1).astype(f"<u{width}").tobytes() + ids.astype(f"<u{width}").tobytes()
            + logp[rows, ids].astype("<f4").tobytes())


def unpack_frames(data: bytes) -> list[tuple[list[int], list[float]]]:
    frames, width = (int(x) for x in np.frombuffer(data, "<u4", 2))
    counts = np.frombuffer(data, f"<u{width}", frames, 8)
    n = int(counts.sum())
    ids = np.frombuffer(data, f"<u{width}", n, 8 + frames * width)
    # float64, as the reference computes in (numpy 2): the same sums and ties as decoding dense log-probs
    values = np.frombuffer(data, "<f4", n, 8 + (frames + n) * width).astype(np.float64)
    cuts = np.cumsum(counts)[:-1]
    return [(i.tolist(), v.tolist()) for i, v in zip(np.split(ids, cuts), np.split(values, cuts))]


# ------------------------------------------------------------------ finalize
_DECODERS: dict[DecoderSpec, beam.BeamSearch] = {}


def decoder(spec: DecoderSpec, options: Mapping[str, Any] | None = None) -> beam.BeamSearch:
    """The process's decoder for ``spec``: the LM is loaded once per worker process, not per task."""
    if spec not in _DECODERS:
        lm = None
        if spec.lm:
            words = beam.read_words(Path(local_copy(spec.lexicon, options))) if spec.lexicon else None
            lm = beam.NgramLM(local_copy(spec.lm, options), words, alpha=spec.alpha, beta=spec.beta,
                              unk_score_offset=spec.unk_score_offset, score_boundary=spec.score_boundary)
        _DECODERS.clear()  # one LM per process: a job has one decoder
        _DECODERS[spec] = beam.BeamSearch(spec.labels, lm, beam_width=spec.beam_width,
                                          beam_prune_logp=spec.beam_prune_logp, token_min_logp=spec.token_min_logp,
                                          hotwords=beam.Hotwords(spec.hotwords, spec.hotword_weight))
    return _DECODERS[spec]


def local_copy(uri: str, options: Mapping[str, Any] | None = None) -> str:
    """A local path for ``uri`` (KenLM reads files only): remote objects are copied once per node."""
    if not storage.is_remote(uri):
        return uri
    target = Path(tempfile.gettempdir(), "sew-lm", hashlib.sha1(uri.encode()).hexdigest()[:16], Path(uri).name)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fs, path = storage.filesystem(uri, options)
        part = target.with_suffix(f".{os.getpid()}.part")
        with fs.open(path, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 * 2**20)
        os.replace(part, target)  # atomic: concurrent workers on one node never read a half-written file
    return str(target)


def decode_item(frames: list[tuple[list[int], list[float]]], spec: DecoderSpec, seconds_per_frame: float,
                offset_s: float, options: Mapping[str, Any] | None = None) -> dict:
    """One item's stitched frames -> text, timed words with confidences, n-best (output columns)."""
    hyps = decoder(spec, options).decode_frames(frames, n_best=spec.n_best)
    best = hyps[0]
    top = [max(v) if v else 0.0 for _, v in frames]  # the frame's best log-prob

    def confidence(first: int, end: int) -> float:
        span = top[first:max(end, first + 1)]
        return round(math.exp(sum(span) / len(span)), 4) if span else 0.0
    return {"text": best.text,
            "words": [{"word": w, "start_s": round(offset_s + s * seconds_per_frame, 3),
                       "end_s": round(offset_s + e * seconds_per_frame, 3)} for w, s, e in best.words],
            "word_confidence": [confidence(s, e) for _, s, e in best.words],
            "nbest": [{"text": h.text, "score": float(h.score)} for h in hyps] if spec.n_best > 1 else None}
