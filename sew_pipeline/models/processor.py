"""Feature extraction (preprocessor_config.json) and CTC vocabulary / greedy decoding (vocab.json)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import fsspec
import numpy as np

if TYPE_CHECKING:  # torch loads on first use: decode workers and the assembler never need it
    import torch

PREPROCESSOR_NAME = "preprocessor_config.json"
VOCAB_NAME = "vocab.json"


def read_json(uri: str, name: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """`name` in the checkpoint folder `uri` (local or remote) as JSON; None when absent."""
    fs, root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
    try:
        with fs.open(f"{root.rstrip('/')}/{name}", "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def read_vocab(uri: str, storage_options: dict[str, Any] | None) -> dict[str, int] | None:
    """The folder's vocab.json (the first language of a multilingual {lang: vocab} file); None when absent."""
    vocab = read_json(uri, VOCAB_NAME, storage_options)
    if vocab and all(isinstance(v, dict) for v in vocab.values()):
        vocab = next(iter(vocab.values()))
    return vocab


def normalize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over one utterance's real samples (the wav2vec 2.0 recipe, eps 1e-7)."""
    x = np.asarray(x, dtype=np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


@dataclass
class FeatureExtractor:
    """Raw waveforms -> padded `input_values` (+ `attention_mask` when the checkpoint asks for one).

    Normalisation always uses each utterance's own samples, before padding. That equals transformers for single
    utterances and for return_attention_mask=True; for return_attention_mask=False transformers normalises
    padded batches over the padding too, which makes a result depend on its batch mates. We do not copy that.
    """

    sampling_rate: int = 16000
    padding_value: float = 0.0
    do_normalize: bool = True
    return_attention_mask: bool = False
    feature_size: int = 1

    @classmethod
    def from_pretrained(cls, path_or_uri: str | Path, storage_options: dict[str, Any] | None = None
                        ) -> "FeatureExtractor":
        cfg = read_json(str(path_or_uri), PREPROCESSOR_NAME, storage_options) or {}
        known = {k: cfg[k] for k in ("sampling_rate", "padding_value", "do_normalize", "return_attention_mask",
                                     "feature_size") if k in cfg}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": self.feature_size,
            "padding_side": "right", "padding_value": self.padding_value, "do_normalize": self.do_normalize,
            "return_attention_mask": self.return_attention_mask, "sampling_rate": self.sampling_rate,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory, PREPROCESSOR_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def __call__(self, waveforms: Sequence[np.ndarray], return_attention_mask: bool | None = None
                 ) -> dict[str, torch.Tensor | None]:
        """List of 1-D float arrays at `sampling_rate` -> {"input_values": [B, S], "attention_mask": [B, S] | None}."""
        want_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask
        rows = [np.asarray(w, np.float32) for w in waveforms]
        longest = max(len(r) for r in rows)
        values = np.full((len(rows), longest), self.padding_value, dtype=np.float32)
        for i, r in enumerate(rows):  # normalised straight into the batch (no per-row copy)
            out = values[i, : len(r)]
            if self.do_normalize:  # the same float32 operations as normalize()
                np.subtract(r, r.mean(), out=out)
                out /= np.sqrt(r.var() + 1e-7)
            else:
                out[:] = r
        import torch
        mask = None
        if want_mask:  # built only when asked for (the pipeline builds its mask from lengths, on the device)
            lengths = np.array([len(r) for r in rows])
            mask = torch.from_numpy((np.arange(longest)[None, :] < lengths[:, None]).astype(np.int64))
        return {"input_values": torch.from_numpy(values), "attention_mask": mask}


class CTCTokenizer:
    """Character vocabulary of a CTC head: blank = pad token, `|` between words, greedy decoding."""

    def __init__(self, vocab: dict[str, int], pad_token: str = "<pad>", unk_token: str = "<unk>",
                 word_delimiter_token: str = "|", special_tokens: Sequence[str] = ("<s>", "</s>")):
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.pad_id = vocab[pad_token]
        self.unk_id = vocab.get(unk_token)
        self.delimiter = word_delimiter_token
        self.skip = {vocab[t] for t in (pad_token, unk_token, *special_tokens) if t in vocab}

    @classmethod
    def from_pretrained(cls, path_or_uri: str | Path, storage_options: dict[str, Any] | None = None
                        ) -> "CTCTokenizer":
        vocab = read_vocab(str(path_or_uri), storage_options)
        if vocab is None:
            raise FileNotFoundError(f"no {VOCAB_NAME} in {path_or_uri}")
        return cls(vocab)

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory, VOCAB_NAME).write_text(json.dumps(self.vocab, ensure_ascii=False) + "\n")

    def encode(self, text: str) -> list[int]:
        """Text -> label ids (spaces become the word delimiter; unknown characters map to <unk>)."""
        ids = []
        for ch in " ".join(text.upper().split()):
            token = self.delimiter if ch == " " else ch
            tid = self.vocab.get(token, self.unk_id)
            if tid is not None:
                ids.append(tid)
        return ids

    def _collapse(self, ids: Sequence[int]) -> list[tuple[int, int, int]]:
        """Greedy CTC: merge runs of equal ids (first), then drop blanks. Returns (id, first_frame, last_frame)."""
        runs: list[tuple[int, int, int]] = []
        for frame, tid in enumerate(ids):
            tid = int(tid)
            if runs and runs[-1][0] == tid:
                runs[-1] = (tid, runs[-1][1], frame)
            else:
                runs.append((tid, frame, frame))
        return [r for r in runs if r[0] != self.pad_id]

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        return self.decode_words(ids)[0]

    def decode_words(self, ids: Sequence[int] | np.ndarray | torch.Tensor, seconds_per_frame: float = 0.02,
                     time_offset_s: float = 0.0) -> tuple[str, list[tuple[str, float, float]]]:
        """Frame-level argmax ids -> (text, [(word, start_s, end_s)]) with times on the caller's timeline.

        A word starts at the first frame of its first character and ends after the last frame of its last one.
        """
        if hasattr(ids, "tolist"):  # a torch tensor or numpy array
            ids = ids.tolist()
        words: list[tuple[str, float, float]] = []
        chars: list[str] = []
        start = end = 0
        for tid, first, last in self._collapse(ids):
            token = self.id_to_token.get(tid, "")
            if token == self.delimiter or tid in self.skip:
                if token == self.delimiter and chars:
                    words.append(("".join(chars), start, end))
                    chars = []
                continue
            if not chars:
                start = first
            chars.append(token)
            end = last + 1
        if chars:
            words.append(("".join(chars), start, end))
        timed = [(w, round(time_offset_s + s * seconds_per_frame, 3), round(time_offset_s + e * seconds_per_frame, 3))
                 for w, s, e in words]
        return " ".join(w for w, _, _ in timed), timed

    def batch_decode(self, logits: torch.Tensor, lengths: Sequence[int] | None = None) -> list[str]:
        """[B, T, V] logits -> greedy transcripts, each cut to its valid frame count."""
        ids = logits.argmax(-1)
        lengths = lengths if lengths is not None else [ids.shape[1]] * ids.shape[0]
        return [self.decode(row[: int(n)]) for row, n in zip(ids, lengths)]
