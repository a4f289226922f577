"""Speech segments (segmentation: vad) → output rows, and the call exports a person reads. No Ray.

Per id: one "segment" row per speech segment (text + words, or label + top-k); for classification a "channel"
row per channel (probabilities averaged with each segment weighted by its seconds); and one "conversation"
row: every channel's turns in time order (a turn = consecutive segments of one channel under TURN_GAP_S apart;
`overlap` when another channel speaks during it), speech seconds per channel, and for classification the call's speech-weighted label.
A failed file is its conversation row with the error; a channel without speech has no segment rows (its
channel_speech entry says 0 s). Exports: `to_text` (plain transcript) and `to_webvtt` (speaker = channel).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sew_pipeline.postprocess import Context, Rows, item_fields, items_of, labelled, transcribe

TURN_GAP_S = 1.0  # one channel's segments closer than this, with no other channel's between, are one turn


def _segment_fields(chunk: dict) -> dict:
    return {**item_fields([chunk]), "start_s": chunk["start_s"], "end_s": chunk["end_s"],
            "duration_s": chunk["end_s"] - chunk["start_s"], "speech_s": chunk["end_s"] - chunk["start_s"],
            "level": "segment", "segment_index": chunk["chunk_index"]}


def _weighted(probs: list[np.ndarray], seconds: list[float]) -> np.ndarray | None:
    return np.average(np.stack(probs), axis=0, weights=seconds) if probs else None


def finish_segments(rows: Rows, task: str, ctx: Context) -> Rows:
    """All output rows of one id whose chunks are speech segments."""
    items = items_of(rows)
    call = {**item_fields(items[0]), "item_id": rows[0]["id"], "channel": -1, "level": "conversation",
            "processing_s": 0.0, "frames": 0, "padded_frames": 0}
    if rows[0].get("item_failed"):
        return [{**call, "speech_s": 0.0, "turns": [], "channel_speech": []}]
    segments, out, probs, speech = [], [], [], []
    for chunks in items:
        speaking = [c for c in chunks if c["num_chunks"] != 0]  # num_chunks 0: the no-speech row
        item_probs = []
        for c in speaking:
            row = _segment_fields(c)
            if task == "ctc":
                row = transcribe({**row, "num_chunks": 1}, [c], ctx)
            elif row["error_type"] is None:
                p = np.frombuffer(c["payload"], dtype="<f4")
                item_probs.append((p, row["speech_s"]))
                row.update(num_windows=1, **labelled(p, ctx))
            segments.append(row)
        seconds = sum(c["end_s"] - c["start_s"] for c in speaking)
        speech.append({"channel": chunks[0]["channel"], "speech_s": seconds, "segments": len(speaking)})
        if task == "classification":
            channel = {**item_fields(chunks), "level": "channel", "speech_s": seconds, "num_windows": len(speaking)}
            mean = _weighted([p for p, _ in item_probs], [s for _, s in item_probs])
            if mean is not None:
                channel.update(labelled(mean, ctx))
            out.append(channel)
            probs.extend(item_probs)
    segments.sort(key=lambda r: (r["start_s"], r["channel"]))
    failed = [r for r in segments if r["error_type"] is not None]
    if failed:  # the conversation is incomplete: say how much, keep what was heard
        call.update(error_type=failed[0]["error_type"],
                    error=f"{len(failed)} of {len(segments)} segments failed; first: {failed[0]['error']}")
    call.update(speech_s=sum(s["speech_s"] for s in speech), channel_speech=speech,
                turns=turns([r for r in segments if r["error_type"] is None], task, ctx))
    if task == "classification":
        call["num_windows"] = len(segments)
        mean = _weighted([p for p, _ in probs], [s for _, s in probs])
        if mean is not None:
            call.update(labelled(mean, ctx))
    else:
        call["num_chunks"] = len(segments)
    return segments + out + [call]


def turns(segments: Rows, task: str, ctx: Context | None = None) -> list[dict]:
    """Segments (in time order) → turns: runs of one channel's segments less than TURN_GAP_S apart with no other
    channel's in between.
    CTC segments that decoded to no text are not turns (a cough, a click)."""
    if task == "ctc":
        segments = [s for s in segments if s.get("text")]
    runs: list[list[dict]] = []
    for s in segments:
        last = runs[-1][-1] if runs else None
        if last is not None and last["channel"] == s["channel"] and s["start_s"] - last["end_s"] < TURN_GAP_S:
            runs[-1].append(s)
        else:
            runs.append([s])
    out = []
    for run in runs:
        turn = {"channel": run[0]["channel"], "start_s": run[0]["start_s"], "end_s": max(s["end_s"] for s in run),
                "text": None, "label": None, "overlap": False}
        if task == "ctc":
            turn["text"] = " ".join(s["text"] for s in run)
        else:  # the turn's label: its segments' top-k scores weighted by seconds
            scores: dict[str, float] = {}
            for s in run:
                for ls in s.get("top_k") or []:
                    scores[ls["label"]] = scores.get(ls["label"], 0.0) + ls["score"] * s["duration_s"]
            turn["label"] = max(scores, key=scores.get) if scores else None
        out.append(turn)
    for i, a in enumerate(out):  # turns start in order: only later ones starting before `a` ends can overlap it
        for b in out[i + 1:]:
            if b["start_s"] >= a["end_s"]:
                break
            if b["channel"] != a["channel"]:
                a["overlap"] = b["overlap"] = True
    return out


# ------------------------------------------------------------------ exports
def _speaker(channel: int, names: Sequence[str]) -> str:
    return names[channel] if 0 <= channel < len(names) else f"channel {channel}"


def _clock(seconds: float, sep: str = ".") -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _says(turn: Mapping) -> str:
    return turn.get("text") if turn.get("text") is not None else f"[{turn.get('label')}]"


def to_text(conversation: Mapping, names: Sequence[str] = ()) -> str:
    """A conversation row as a transcript: a header, then one line per turn."""
    lines = [f"# {conversation['id']}  ({conversation.get('audio_uri')})",
             f"# {conversation.get('duration_s') or 0:.1f} s; speech: " + ", ".join(
                 f"{_speaker(c['channel'], names)} {c['speech_s']:.1f} s"
                 for c in conversation.get("channel_speech") or [])]
    if conversation.get("error"):
        lines.append(f"# error ({conversation['error_type']}): {conversation['error']}")
    for t in conversation.get("turns") or []:
        mark = "  (overlap)" if t["overlap"] else ""
        lines.append(f"[{_clock(t['start_s'])} - {_clock(t['end_s'])}] {_speaker(t['channel'], names)}: "
                     f"{_says(t)}{mark}")
    return "\n".join(lines) + "\n"


def to_webvtt(conversation: Mapping, names: Sequence[str] = ()) -> str:
    """A conversation row as WebVTT: one cue per turn, the channel as the cue's voice (<v speaker>)."""
    cues = ["WEBVTT", ""]
    for i, t in enumerate(conversation.get("turns") or [], start=1):
        text = _says(t).replace("-->", "->").replace("\n", " ")
        cues += [str(i), f"{_clock(t['start_s'])} --> {_clock(t['end_s'])}",
                 f"<v {_speaker(t['channel'], names)}>{text}", ""]
    return "\n".join(cues)
