"""End-of-run summary: counts, audio hours, speed and padding, as a dict and a printable table."""
from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

SUMMARY_COLUMNS = ["id", "level", "error_type", "duration_s", "frames", "padded_frames", "processing_s", "speech_s"]


def _items_and_model_rows(rows: list[dict], task: str) -> tuple[list[dict], list[dict]]:
    """(one row per item: what ok/error and audio hours count, the rows whose model cost is theirs)."""
    if any(r.get("level") == "conversation" for r in rows):  # segmentation vad: a call is the item
        return ([r for r in rows if r.get("level") == "conversation"],
                [r for r in rows if r.get("level") == "segment"])
    if task == "classification":
        return [r for r in rows if r.get("level") == "channel"], [r for r in rows if r.get("level") == "window"]
    return rows, rows


def summarize(rows: pa.Table | None, task: str, wall_s: float, manifest_rows: int,
              skipped: int, expected: int, seconds_per_frame: float = 0.02) -> dict[str, Any]:
    """Summary of the rows one run wrote. ``expected``: ids this run had to process."""
    rows_ = rows.to_pylist() if rows is not None else []
    items, framed = _items_and_model_rows(rows_, task)
    ok = [r for r in items if r["error_type"] is None]
    errors = Counter(r["error_type"] for r in items if r["error_type"] is not None)
    audio_s = sum(r["duration_s"] or 0.0 for r in ok)
    frames = sum(r["frames"] or 0 for r in framed)
    padded = sum(r["padded_frames"] or 0 for r in framed)
    written = len({r["id"] for r in rows_})
    return {
        "manifest_rows": manifest_rows,
        "skipped_already_done": skipped,
        "ids_written": written,
        "ids_not_written": max(expected - written, 0),
        "rows_ok": len(ok),
        "rows_error": sum(errors.values()),
        "errors_by_type": dict(sorted(errors.items())),
        "audio_hours": audio_s / 3600.0,
        "wall_s": wall_s,
        "model_s": sum(r.get("processing_s") or 0.0 for r in framed),
        "real_time_factor": wall_s / audio_s if audio_s else None,
        "audio_s_per_s": audio_s / wall_s if wall_s else None,
        "padded_frame_fraction": padded / frames if frames else 0.0,
        # what the model was given (without padding): with segmentation vad, the speech only
        "model_audio_s": (frames - padded) * seconds_per_frame,
        "speech_fraction": (sum(r.get("speech_s") or 0.0 for r in ok) / audio_s
                            if audio_s and any(r.get("level") == "conversation" for r in ok) else None),
    }


def format_table(summary: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
        return str(value)
    labels = {
        "manifest_rows": "manifest rows", "skipped_already_done": "skipped (already in output)",
        "ids_written": "ids written", "ids_not_written": "ids not written (rerun to retry)",
        "rows_ok": "items ok", "rows_error": "items with errors", "errors_by_type": "errors by type",
        "audio_hours": "audio hours (ok items)", "wall_s": "wall time (s)", "model_s": "model time (s)",
        "real_time_factor": "real-time factor (wall/audio)", "audio_s_per_s": "throughput (audio s / s)",
        "padded_frame_fraction": "padded-frame fraction", "model_audio_s": "model input audio (s)",
        "speech_fraction": "speech / audio (vad)",
    }
    width = max(len(v) for v in labels.values())
    lines = ["-" * (width + 24)]
    lines += [f"{labels[k]:<{width}}  {fmt(summary.get(k))}" for k in labels]
    lines.append("-" * (width + 24))
    return "\n".join(lines)
