"""End-of-run summary: counts, audio hours, speed and padding, as a dict and a printable table."""
from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

SUMMARY_COLUMNS = ["id", "error_type", "duration_s", "frames", "padded_frames", "processing_s"]


def summarize(rows: pa.Table | None, task: str, wall_s: float, manifest_rows: int,
              skipped: int, expected: int) -> dict[str, Any]:
    """Summary of the rows one run wrote. ``expected``: ids this run had to process."""
    rows_ = rows.to_pylist() if rows is not None else []
    if task == "classification":
        items = [r for r in rows_ if r.get("level") == "channel"]
        framed = [r for r in rows_ if r.get("level") == "window"]
    else:
        items = framed = rows_
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
        "padded_frame_fraction": "padded-frame fraction",
    }
    width = max(len(v) for v in labels.values())
    lines = ["-" * (width + 24)]
    lines += [f"{labels[k]:<{width}}  {fmt(summary.get(k))}" for k in labels]
    lines.append("-" * (width + 24))
    return "\n".join(lines)
