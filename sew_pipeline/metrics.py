"""Word/character error rates over prediction batches (jiwer), with pooled aggregates.

Normalisation (applied identically to reference and hypothesis before scoring):

* ``minimal`` (the headline number): upper-case, collapse any run of whitespace to one
  space, strip. Nothing else: punctuation and apostrophes are kept, as LibriSpeech
  transcripts are upper-case words with apostrophes (``DON'T``) and no other punctuation.
* ``whisper`` (second number, ``*_whisper`` columns): a documented subset of the Whisper
  English normaliser, implemented here (not vendored): lower-case; drop ``[...]``/``<...>``
  and ``(...)`` spans; drop filler words (hmm, mm, mhm, mmm, uh, um); expand common
  contractions and titles (``won't``->``will not``, ``can't``->``can not``, ``n't``->`` not``,
  ``'re``->`` are``, ``'s``->`` is``, ``'d``->`` would``, ``'ll``->`` will``, ``'ve``->`` have``,
  ``'m``->`` am``, ``mr``->``mister``, ``mrs``->``missus``, ``dr``->``doctor``, ...); remove
  commas between digits; strip diacritics; replace every remaining punctuation/symbol
  character (apostrophes included) by a space; collapse whitespace. Not done (unlike
  Whisper): spelled-out-number -> digit conversion and British->American spellings.

Scores equal jiwer's (``jiwer.wer`` / ``jiwer.cer`` on the normalised strings), including
its empty-reference rule: with no reference words the error rate is the number of
insertions (0 for an empty hypothesis). CER counts spaces as characters, as jiwer does.
Corpus/split/speaker rates are pooled: (S+D+I) summed over utterances divided by the
summed reference length, never a mean of per-utterance rates.

A missing hypothesis (null: the pipeline failed on that item) scores as an empty
hypothesis, i.e. all deletions, so pipeline failures show up in the WER.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import jiwer
import numpy as np
import pandas as pd
import pyarrow as pa

_WS = re.compile(r"\s+")
COUNT_FIELDS = ("hits", "substitutions", "deletions", "insertions")


def normalize_minimal(text: str | None) -> str:
    """Upper-case, collapse whitespace, strip (None -> "")."""
    return _WS.sub(" ", (text or "").upper()).strip()


# Whisper-style replacers, applied in order after lower-casing.
_WHISPER_REPLACERS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(p), r)
    for p, r in [
        (r"\bwon't\b", "will not"),
        (r"\bcan't\b", "can not"),
        (r"\blet's\b", "let us"),
        (r"\bain't\b", "aint"),
        (r"\by'all\b", "you all"),
        (r"\bwanna\b", "want to"),
        (r"\bgotta\b", "got to"),
        (r"\bgonna\b", "going to"),
        (r"\bma'am\b", "madam"),
        (r"\bmr\b", "mister "),
        (r"\bmrs\b", "missus "),
        (r"\bst\b", "saint "),
        (r"\bdr\b", "doctor "),
        (r"\bprof\b", "professor "),
        (r"n't\b", " not"),
        (r"'re\b", " are"),
        (r"'s\b", " is"),
        (r"'d\b", " would"),
        (r"'ll\b", " will"),
        (r"'t\b", " not"),
        (r"'ve\b", " have"),
        (r"'m\b", " am"),
    ]
)
_BRACKETS = re.compile(r"[<\[][^>\]]*[>\]]|\([^)]+?\)")
_FILLERS = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")


def _drop_symbols_and_diacritics(s: str) -> str:
    # NFKD splits accents off their letters; marks (M*) vanish, punctuation/symbols (P*, S*)
    # become spaces so that "well,then" still gives two words.
    out = []
    for ch in unicodedata.normalize("NFKD", s):
        cat = unicodedata.category(ch)
        if cat.startswith("M"):
            continue
        out.append(" " if cat[0] in "PS" else ch)
    return "".join(out)


def normalize_whisper(text: str | None) -> str:
    """Whisper-style English normalisation (documented subset, see module doc)."""
    s = (text or "").lower()
    s = _BRACKETS.sub("", s)
    s = _FILLERS.sub("", s)
    s = re.sub(r"\s+'", "'", s)
    for pattern, repl in _WHISPER_REPLACERS:
        s = pattern.sub(repl, s)
    s = re.sub(r"(\d),(\d)", r"\1\2", s)
    s = _drop_symbols_and_diacritics(s)
    return _WS.sub(" ", s).strip()


NORMALIZERS: dict[str, Callable[[str | None], str]] = {
    "minimal": normalize_minimal,
    "whisper": normalize_whisper,
}


def error_rate(hits: int, substitutions: int, deletions: int, insertions: int) -> float:
    """jiwer's formula, including its empty-reference rule (rate = insertions)."""
    n = hits + substitutions + deletions
    if n == 0:
        return float(insertions)
    return float(substitutions + deletions + insertions) / float(n)


@dataclass(frozen=True)
class Counts:
    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def ref_len(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def rate(self) -> float:
        return error_rate(self.hits, self.substitutions, self.deletions, self.insertions)


def _counts_from_alignments(alignments: Iterable[Sequence[jiwer.AlignmentChunk]]) -> list[Counts]:
    out = []
    for chunks in alignments:
        c = dict.fromkeys(("equal", "substitute", "delete", "insert"), 0)
        for ch in chunks:
            span = ch.hyp_end_idx - ch.hyp_start_idx if ch.type == "insert" else ch.ref_end_idx - ch.ref_start_idx
            c[ch.type] += span
        out.append(Counts(c["equal"], c["substitute"], c["delete"], c["insert"]))
    return out


def word_counts(refs: Sequence[str], hyps: Sequence[str]) -> list[Counts]:
    """Per-pair word-level counts (one jiwer call for the whole batch)."""
    if not refs:
        return []
    return _counts_from_alignments(jiwer.process_words(list(refs), list(hyps)).alignments)


def char_counts(refs: Sequence[str], hyps: Sequence[str]) -> list[Counts]:
    """Per-pair character-level counts (spaces count as characters, as in jiwer.cer)."""
    if not refs:
        return []
    return _counts_from_alignments(jiwer.process_characters(list(refs), list(hyps)).alignments)


def _score_columns(refs: list[str], hyps: list[str], suffix: str) -> dict[str, list]:
    words, chars = word_counts(refs, hyps), char_counts(refs, hyps)
    cols: dict[str, list] = {f"{k}{suffix}": [getattr(c, k) for c in words] for k in COUNT_FIELDS}
    cols[f"ref_words{suffix}"] = [c.ref_len for c in words]
    cols[f"wer{suffix}"] = [c.rate for c in words]
    cols[f"char_errors{suffix}"] = [c.substitutions + c.deletions + c.insertions for c in chars]
    cols[f"ref_chars{suffix}"] = [c.ref_len for c in chars]
    cols[f"cer{suffix}"] = [c.rate for c in chars]
    return cols


def score_frame(
    df: pd.DataFrame, *, ref_col: str = "reference", hyp_col: str = "hypothesis", whisper: bool = True
) -> pd.DataFrame:
    """Add normalised texts, per-utterance counts and WER/CER (minimal, optionally whisper)."""
    out = df.copy()
    refs_raw, hyps_raw = list(df[ref_col]), list(df[hyp_col])
    variants = [("", normalize_minimal)] + ([("_whisper", normalize_whisper)] if whisper else [])
    for suffix, norm in variants:
        refs = [norm(_text(t)) for t in refs_raw]
        hyps = [norm(_text(t)) for t in hyps_raw]
        out[f"reference_norm{suffix}"] = refs
        out[f"hypothesis_norm{suffix}"] = hyps
        for name, values in _score_columns(refs, hyps, suffix).items():
            out[name] = values
    return out


def _text(value) -> str | None:
    # pandas gives NaN/None for nulls; anything else is text.
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def score_batch(batch, *, ref_col: str = "reference", hyp_col: str = "hypothesis", whisper: bool = True):
    """The WER stage: same scoring over a pandas DataFrame, pyarrow Table or dict of arrays
    (Ray's pandas/pyarrow/numpy batch formats); returns the same kind it was given."""
    if isinstance(batch, pd.DataFrame):
        return score_frame(batch, ref_col=ref_col, hyp_col=hyp_col, whisper=whisper)
    if isinstance(batch, pa.Table):
        scored = score_frame(batch.to_pandas(), ref_col=ref_col, hyp_col=hyp_col, whisper=whisper)
        return pa.Table.from_pandas(scored, preserve_index=False)
    if isinstance(batch, dict):
        scored = score_frame(pd.DataFrame(dict(batch)), ref_col=ref_col, hyp_col=hyp_col, whisper=whisper)
        return {k: scored[k].to_numpy() for k in scored.columns}
    raise TypeError(f"unsupported batch type {type(batch).__name__}")


def _pooled(g: pd.DataFrame, suffix: str) -> dict[str, float]:
    s = {k: int(g[f"{k}{suffix}"].sum()) for k in COUNT_FIELDS}
    chars_ref = int(g[f"ref_chars{suffix}"].sum())
    char_err = int(g[f"char_errors{suffix}"].sum())
    out = {f"wer{suffix}": error_rate(s["hits"], s["substitutions"], s["deletions"], s["insertions"])}
    # CER pooled with the same empty-reference rule (errors are all insertions then).
    out[f"cer{suffix}"] = float(char_err) / chars_ref if chars_ref else float(char_err)
    return out


def corpus_scores(scored: pd.DataFrame) -> dict[str, float | int]:
    """Pooled totals over all rows of a scored frame."""
    out: dict[str, float | int] = {"n_utts": int(len(scored)), "n_words": int(scored["ref_words"].sum())}
    out.update({k: int(scored[k].sum()) for k in COUNT_FIELDS})
    out.update(_pooled(scored, ""))
    if "wer_whisper" in scored.columns:
        out.update(_pooled(scored, "_whisper"))
    return out


def aggregate(scored: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Pooled WER/CER per group (e.g. "split" or ["split", "speaker"]), one row per group."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in scored.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **corpus_scores(g)})
    return pd.DataFrame(rows)
