"""CTC prefix beam search with a KenLM n-gram model, a unigram lexicon and hotwords (no Ray, no torch).

The search and its scores are those of pyctcdecode 0.5.0, the decoder behind transformers'
`Wav2Vec2ProcessorWithLM`, so a "-with-lm" checkpoint folder gives the transcripts its users know (a test
compares the two on the same logits). Written here on `kenlm` alone because pyctcdecode's wheel caps numpy
below 2. Character vocabularies only (every SEW/wav2vec 2.0 CTC head); BPE vocabularies are refused.

Per frame: the candidate tokens are those with log-prob >= token_min_logp, plus the frame's best. Every beam is
extended by every candidate (blank and repeats keep the prefix, the word delimiter completes the partial word,
a letter extends it); beams with the same (text, partial word, last token) merge, their acoustic scores summed
in probability space. A beam's score is its acoustic log-prob + the LM score of its completed words (alpha * ln P
+ beta per word; words outside the lexicon get unk_score_offset) + a penalty for a partial word that no lexicon
word starts with, + hotword bonuses. Beams more than beam_prune_logp below the best are dropped, then the best
beam_width kept. At the end the partial words are completed and scored with the sentence end.

Order matters for exact equality (merged beams keep the later beam's fields, ties keep the earlier beam), so
candidates and beams are visited in the same order as pyctcdecode visits them.
"""
from __future__ import annotations

import bisect
import functools
import heapq
import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

LOG10_TO_LN = 1.0 / math.log10(math.e)  # kenlm scores are log10
MIN_PROB = 1e-15                        # log-probs are clipped at ln(1e-15), as pyctcdecode does
AVG_WORD_LEN = 6                        # a partial word longer than this is penalised in proportion
UNK_LABEL = "⁇"
Frames = tuple[int, int]
NO_FRAMES: Frames = (-1, -1)


# ------------------------------------------------------------------ labels
def labels_from_vocab(vocab: dict[str, int]) -> list[str]:
    """The decoder's label per token id: blank ``<pad>`` -> "", delimiter ``|`` -> " ", ``<unk>`` -> ⁇,
    every other token as itself (pyctcdecode's normalisation of a character alphabet)."""
    labels = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if any(t.startswith("##") or t.startswith("▁") for t in labels):
        raise ValueError("BPE vocabularies are not supported by the beam decoder (character vocabularies only)")
    if "|" in labels and " " not in labels:
        labels[labels.index("|")] = " "
    labels = ["" if re.fullmatch(r"[<\[]pad[>\]]", t, re.I) else t for t in labels]
    if "_" in labels and "" not in labels:
        labels[labels.index("_")] = ""
    if "" not in labels:
        labels.append("")  # a blank the model never emits
    return [UNK_LABEL if re.fullmatch(r"[<\[]unk[>\]]", t, re.I) else t for t in labels]


def log_probs(logits: np.ndarray) -> np.ndarray:
    """[T, V] logits (or probabilities) -> clipped log-probs, computed exactly as pyctcdecode does."""
    if math.isclose(logits.sum(axis=1).mean(), 1):  # already probabilities
        return np.log(np.clip(logits, MIN_PROB, 1))
    top = np.amax(logits, axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0
    shifted = logits - top
    with np.errstate(divide="ignore"):
        norm = np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return np.clip(shifted - norm, np.log(MIN_PROB), 0)


def candidate_mask(logp: np.ndarray, token_min_logp: float) -> np.ndarray:
    """[T, V] bool: the tokens the search reads (log-prob >= token_min_logp, and each frame's best)."""
    keep = logp >= token_min_logp
    if len(logp):
        keep[np.arange(len(logp)), logp.argmax(axis=1)] = True
    return keep


# ------------------------------------------------------------------ scorers
class Lexicon:
    """Sorted words: is a string the start of any word? (bisect: no trie needed)."""

    def __init__(self, words: Sequence[str]):
        self.words = sorted(set(words))

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        i = bisect.bisect_left(self.words, word)
        return i < len(self.words) and self.words[i] == word

    def has_prefix(self, prefix: str) -> bool:
        i = bisect.bisect_left(self.words, prefix)
        return i < len(self.words) and self.words[i].startswith(prefix)


class Hotwords:
    """A bonus of ``weight`` per hotword occurrence in the text, and a share of it for a partial word that
    begins a hotword (its length over the shortest hotword it begins)."""

    def __init__(self, phrases: Sequence[str] = (), weight: float = 10.0):
        self.words = [w for p in phrases for w in p.strip().split()]
        self.weight = weight
        longest_first = sorted(self.words, key=len, reverse=True)
        self.pattern = re.compile("|".join(rf"(?<!\S){re.escape(w)}(?!\S)" for w in longest_first)) \
            if self.words else None

    def __contains__(self, partial: str) -> bool:
        return any(w.startswith(partial) for w in self.words)

    def score(self, text: str) -> float:
        return self.weight * len(self.pattern.findall(text)) if self.pattern else 0.0

    def score_partial(self, partial: str) -> float:
        lengths = [len(w) for w in self.words if w.startswith(partial)]
        return self.weight * len(partial) / min(lengths) if lengths else 0.0


class NgramLM:
    """A KenLM model (ARPA or binary) with the unigram lexicon and the shallow-fusion weights."""

    def __init__(self, path: str, unigrams: Sequence[str] | None = None, alpha: float = 0.5, beta: float = 1.5,
                 unk_score_offset: float = -10.0, score_boundary: bool = True):
        import kenlm
        self.kenlm = kenlm
        self.model = kenlm.Model(path)
        if unigrams is None:  # an ARPA file names its words; a binary does not (then no lexicon)
            unigrams = arpa_unigrams(path) if path.endswith(".arpa") else []
        self.lexicon = Lexicon([w for w in unigrams if w in self.model])  # words the LM cannot score are dropped
        self.alpha, self.beta = alpha, beta
        self.unk_score_offset, self.score_boundary = unk_score_offset, score_boundary

    @property
    def order(self) -> int:
        return int(self.model.order)

    def start(self):
        state = self.kenlm.State()
        (self.model.BeginSentenceWrite if self.score_boundary else self.model.NullContextWrite)(state)
        return state

    def score(self, state, word: str, last: bool = False):
        """(alpha * ln P(word | state) + beta, next state); with ``last``, the sentence end is scored too."""
        out = self.kenlm.State()
        logp = self.model.BaseScore(state, word, out)
        if (len(self.lexicon) and word not in self.lexicon) or word not in self.model:
            logp += self.unk_score_offset
        if last and self.score_boundary:
            logp = logp + self.model.BaseScore(out, "</s>", self.kenlm.State())
        return self.alpha * logp * LOG10_TO_LN + self.beta, out

    def score_partial(self, partial: str) -> float:
        unk = self.unk_score_offset * int(not (len(self.lexicon) and self.lexicon.has_prefix(partial)))
        return unk * len(partial) / AVG_WORD_LEN if len(partial) > AVG_WORD_LEN else unk


def arpa_unigrams(path: str) -> list[str]:
    """The words of an ARPA file's 1-gram section (what pyctcdecode uses when no unigram list is given)."""
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif line == "\\2-grams:":
                break
            elif inside and len(parts := line.split("\t")) == 3:
                words.append(parts[1])
    return words


# ------------------------------------------------------------------ search
class _Beam(NamedTuple):
    text: str                        # words completed and LM-scored so far
    next_word: str                   # a word completed at this frame, scored at the end of the frame
    partial: str                     # the word being spelled
    last: str | None                 # label of the last token ("" = blank)
    word_frames: tuple[Frames, ...]  # [first, end) frames of each completed word
    partial_frames: Frames
    acoustic: float                  # log-prob of the token paths merged into this beam


# tuple.__new__ skips the Python-level __new__ of a NamedTuple: the search makes a beam per candidate and frame
_beam = functools.partial(tuple.__new__, _Beam)
_score_of = operator.itemgetter(0)  # of a (score, beam) pair


@dataclass(frozen=True)
class Hypothesis:
    text: str
    words: list[tuple[str, int, int]]  # (word, first frame, end frame)
    acoustic_score: float              # log-prob of the token paths
    score: float                       # acoustic + LM + hotword scores


def _logaddexp(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log(1 + math.exp(lo - hi))  # log(1 + x), not log1p: the same float as pyctcdecode


def _merge(beams: list[_Beam]) -> list[_Beam]:
    """Beams with one prefix as one: the later beam's fields, probabilities summed, first position kept."""
    merged: dict[tuple, _Beam] = {}
    for b in beams:
        key = ((f"{b.text} {b.next_word}" if b.text else b.next_word) if b.next_word else b.text, b.partial, b.last)
        seen = merged.get(key)
        merged[key] = b if seen is None else _beam((*b[:6], _logaddexp(seen.acoustic, b.acoustic)))
    return list(merged.values())


class BeamSearch:
    """CTC beam search over ``labels`` (one per token id, see labels_from_vocab) with an optional LM."""

    def __init__(self, labels: Sequence[str], lm: NgramLM | None = None, beam_width: int = 100,
                 beam_prune_logp: float = -10.0, token_min_logp: float = -5.0, prune_history: bool = False,
                 hotwords: Hotwords | None = None):
        self.labels, self.lm = list(labels), lm
        self.beam_width, self.beam_prune_logp, self.token_min_logp = beam_width, beam_prune_logp, token_min_logp
        self.prune_history = prune_history
        self.hotwords = hotwords or Hotwords()

    def decode(self, logits: np.ndarray, n_best: int = 1) -> list[Hypothesis]:
        """[T, V] logits (or probabilities) of one item -> the best ``n_best`` hypotheses, best first."""
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise ValueError(f"logits of shape {logits.shape}: expected [frames, {len(self.labels)}]")
        return self.decode_frames(self.candidates(log_probs(logits)), n_best)

    def candidates(self, logp: np.ndarray) -> list[tuple[list[int], list[float]]]:
        """Per frame, the tokens the search looks at (ids ascending, with their log-probs): all others are
        never read, so this is all the model stage needs to ship."""
        keep = candidate_mask(logp, self.token_min_logp)
        rows, ids = np.nonzero(keep)
        cuts = np.cumsum(np.bincount(rows, minlength=len(logp)))[:-1]
        return [(i.tolist(), v.tolist()) for i, v in zip(np.split(ids, cuts), np.split(logp[rows, ids], cuts))]

    def decode_frames(self, frames: Sequence[tuple[Sequence[int], Sequence[float]]], n_best: int = 1
                      ) -> list[Hypothesis]:
        """Search over per-frame candidates (token ids ascending, their log-probs as floats)."""
        cache = _ScoreCache(self.lm, self.hotwords)
        beams = [_Beam("", "", "", None, (), NO_FRAMES, 0.0)]
        labels, min_logp = self.labels, self.token_min_logp
        for t, (ids, logps) in enumerate(frames):
            by_id = dict(zip(ids, logps))
            best = ids[max(range(len(logps)), key=logps.__getitem__)]  # first of equal maxima, as argmax
            extended = []
            # a set, built as the reference builds it: its iteration order decides merge and tie order
            for k in set(k for k, p in zip(ids, logps) if p >= min_logp) | {best}:
                token, p = labels[k], by_id[k]
                extended.extend([_extend(b, token, p, t) for b in beams])
            beams = [b for _, b in self._prune(cache.rescore(_merge(extended)), self.beam_width)]
            if self.prune_history:
                beams = _distinct_history(beams, self.lm.order if self.lm else 1)
        ends = [_beam((b.text, b.partial, "", None, b.word_frames + ((b.partial_frames,) if b.partial else ()),
                       NO_FRAMES, b.acoustic)) for b in beams]
        final = self._prune(cache.rescore(_merge(ends), last=True), max(self.beam_width, n_best))[:n_best]
        return [Hypothesis(" ".join(b.text.split()), list(zip(b.text.split(), *zip(*b.word_frames)))
                           if b.word_frames else [], b.acoustic, score) for score, b in final]

    def _prune(self, scored: list[tuple[float, _Beam]], width: int) -> list[tuple[float, _Beam]]:
        """Beams within beam_prune_logp of the best, then the best ``width`` (ties: the earlier first)."""
        floor = max(scored, key=_score_of)[0] + self.beam_prune_logp
        return heapq.nlargest(width, [s for s in scored if s[0] >= floor], key=_score_of)


def _extend(b: _Beam, token: str, p: float, t: int) -> _Beam:
    """Beam ``b`` after emitting ``token`` (log-prob ``p``) at frame ``t``."""
    if token == "" or token == b.last:  # blank, or a repeat that CTC collapses
        frames = b.partial_frames if token == "" else (b.partial_frames[0], t + 1)
        return _beam((b.text, b.next_word, b.partial, token, b.word_frames, frames, b.acoustic + p))
    if token == " ":  # the word delimiter completes the partial word
        done = b.word_frames + (b.partial_frames,) if b.partial else b.word_frames
        return _beam((b.text, b.partial, "", token, done, NO_FRAMES, b.acoustic + p))
    first = t if b.partial_frames[0] < 0 else b.partial_frames[0]
    return _beam((b.text, b.next_word, b.partial + token, token, b.word_frames, (first, t + 1), b.acoustic + p))


def _distinct_history(beams: list[_Beam], order: int) -> list[_Beam]:
    """Of beams that agree on the last order-1 words (all the LM will ever see), the best one."""
    seen, out = set(), []
    for b in beams:
        key = (tuple(b.text.split()[-max(1, order - 1):]), b.partial, b.last)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


class _ScoreCache:
    """LM scores of texts (with their LM state) and of partial words, shared by the beams of one item."""

    def __init__(self, lm: NgramLM | None, hotwords: Hotwords):
        self.lm, self.hotwords = lm, hotwords
        self.texts = {("", False): (0.0, 0.0, lm.start() if lm else None)}  # (with hotwords, LM only, state)
        self.partials: dict[str, float] = {}

    def rescore(self, beams: list[_Beam], last: bool = False) -> list[tuple[float, _Beam]]:
        """(score, beam with its completed word moved into its text) per beam."""
        out, texts, partials, hotwords = [], self.texts, self.partials, self.hotwords
        for b in beams:
            if b.next_word:
                text = f"{b.text} {b.next_word}" if b.text else b.next_word
                scored = _beam((text, "", b.partial, b.last, b.word_frames, b.partial_frames, b.acoustic))
            else:
                text, scored = b.text, b
            if self.lm is None:
                out.append((b.acoustic + hotwords.score(text) + hotwords.score_partial(b.partial), scored))
                continue
            key = (text, last)
            if key not in texts:
                _, raw, state = texts[(b.text, False)]
                word_score, after = self.lm.score(state, b.next_word, last)
                raw += word_score
                texts[key] = (raw + hotwords.score(text), raw, after)
            lm = texts[key][0]
            if b.partial:
                if b.partial not in partials:
                    partials[b.partial] = hotwords.score_partial(b.partial) if b.partial in hotwords \
                        else self.lm.score_partial(b.partial)
                lm += partials[b.partial]
            out.append((b.acoustic + lm, scored))  # acoustic + (words + partial): the reference's sum order
        return out


# ------------------------------------------------------------------ the "-with-lm" folder layout
LM_DIR = "language_model"
LM_SUFFIXES = (".arpa", ".bin", ".binary")


def read_alphabet(folder: str | Path) -> list[str] | None:
    """The labels of a folder's ``alphabet.json`` (as Wav2Vec2ProcessorWithLM saves it), if it has one."""
    path = Path(folder, "alphabet.json")
    if not path.is_file():
        return None
    alphabet = json.loads(path.read_text(encoding="utf-8"))
    if alphabet.get("is_bpe"):
        raise ValueError(f"{path}: a BPE alphabet (character alphabets only)")
    return list(alphabet["labels"])


def lm_files(folder: str | Path) -> tuple[Path, Path | None, dict]:
    """(KenLM file, unigrams.txt or None, attrs.json contents) of a ``language_model/`` folder."""
    folder = Path(folder)
    models = sorted(p for p in folder.iterdir() if p.suffix in LM_SUFFIXES)
    if len(models) != 1:
        raise ValueError(f"{folder}: expected one KenLM file ({', '.join(LM_SUFFIXES)}), found {len(models)}")
    unigrams = folder / "unigrams.txt"
    attrs = folder / "attrs.json"
    return models[0], unigrams if unigrams.is_file() else None, \
        json.loads(attrs.read_text()) if attrs.is_file() else {}


def read_words(path: Path) -> list[str]:
    return [w for w in path.read_text(encoding="utf-8").split("\n") if w.strip()]
