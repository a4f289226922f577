"""Manifests -> one Arrow table with a stable `id` per row (the join key everywhere downstream).

Accepted inputs (local path or any fsspec URI):
- JSONL (NeMo style: audio_filepath, duration, offset, text; any other keys kept in `extra`),
- CSV / TSV with a header row, Parquet (same column names as JSONL),
- a directory in the LibriSpeech layout: <split>/<speaker>/<chapter>/*.flac + <speaker>-<chapter>.trans.txt.
Relative audio paths resolve against the manifest's own location. Structural problems with the manifest
itself (unparsable line, no audio column, duplicate given ids) raise ValueError naming the manifest;
per-audio problems are left to decoding, which turns them into error rows.
"""
from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sew_pipeline import storage

SCHEMA = pa.schema([
    ("id", pa.string()), ("audio_uri", pa.string()), ("offset_s", pa.float64()),
    ("duration_s", pa.float64()), ("text", pa.string()), ("split", pa.string()),
    ("speaker", pa.string()), ("chapter", pa.string()), ("extra", pa.string()),
])

_PATH_KEYS = ("audio_filepath", "audio_uri", "audio_path", "path", "audio", "file", "filename")
_ALIASES = {
    "id": ("id", "utt_id", "utterance_id"),
    "offset_s": ("offset_s", "offset"),
    "duration_s": ("duration_s", "duration"),
    "text": ("text", "transcript", "sentence"),
    "split": ("split",), "speaker": ("speaker", "speaker_id"), "chapter": ("chapter", "chapter_id"),
}
_AUDIO_EXTS = (".flac", ".wav", ".mp3", ".ogg", ".opus")


def read_manifest(uri: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """Read any supported manifest into a table with `SCHEMA` (one row per input row, input order)."""
    opts = storage_options if storage_options is not None else storage.storage_options()
    fs, path = storage.filesystem(uri, opts)
    if fs.isdir(path):
        return _librispeech(uri, fs, path)
    name = uri.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        with fs.open(path, "rb") as f:
            records: Iterable[dict] = pq.read_table(f).to_pylist()
    else:
        with fs.open(path, "rb", compression="infer") as f:
            text = f.read().decode("utf-8-sig")
        if name.endswith((".csv", ".tsv")):
            records = csv.DictReader(io.StringIO(text), delimiter="\t" if name.endswith(".tsv") else ",")
        else:  # .jsonl / .json / .ndjson / anything else: JSON lines
            records = _jsonl(text, uri)
    return _normalise(records, base=storage.dirname(uri), manifest=uri)


def _jsonl(text: str, uri: str) -> Iterable[dict]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{uri}: line {lineno} is not valid JSON: {exc.msg}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{uri}: line {lineno} is not a JSON object")
        yield rec


def _pop(rec: dict, keys: Iterable[str]) -> Any:
    value = None
    for k in keys:
        if k in rec:
            v = rec.pop(k)
            value = v if value is None else value
    return None if value == "" else value


def _float(value: Any, field: str, manifest: str, row: int) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{manifest}: row {row}: {field}={value!r} is not a number") from None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def derive_id(path: str, offset_s: float | None = None, duration_s: float | None = None) -> str:
    """Stable id from the audio path as written in the manifest (+ the segment, if any).

    The path as written (not the resolved URI) keeps ids identical when a corpus moves between
    local disk and a bucket with relative paths. A segment (`offset` given, as in NeMo segment
    manifests) gets '@<offset>+<duration>'; a plain `duration` is file metadata and leaves the id alone.
    """
    rid = path.removeprefix("./")
    if offset_s is not None:
        rid += f"@{offset_s or 0.0:.3f}+{duration_s if duration_s is not None else -1:.3f}"
    return rid


def _normalise(records: Iterable[dict], base: str, manifest: str) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    seen: dict[str, int] = {}
    dups: dict[str, int] = {}
    for row, rec in enumerate(records):
        rec = dict(rec)
        path = _pop(rec, _PATH_KEYS)
        fields = {k: _pop(rec, keys) for k, keys in _ALIASES.items()}
        offset = _float(fields["offset_s"], "offset", manifest, row)
        duration = _float(fields["duration_s"], "duration", manifest, row)
        given = fields["id"] is not None
        if given:
            rid = str(fields["id"])
        elif path is not None:
            rid = derive_id(str(path), offset, duration)
        else:
            rid = f"row-{row}"  # no path: still a row (decoding reports it as 'missing')
        if rid in seen:
            if given:
                raise ValueError(f"{manifest}: duplicate id {rid!r} (rows {seen[rid]} and {row})")
            dups[rid] = dups.get(rid, 0) + 1
            rid = f"{rid}~{dups[rid]}"  # same segment listed twice: both rows kept, ids stay in input order
        seen[rid] = row
        cols["id"].append(rid)
        cols["audio_uri"].append(storage.join(base, str(path)) if path is not None else None)
        cols["offset_s"].append(offset)
        cols["duration_s"].append(duration)
        for k in ("text", "split", "speaker", "chapter"):
            cols[k].append(_str(fields[k]))
        cols["extra"].append(json.dumps(rec, sort_keys=True, default=str, ensure_ascii=False))
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def _librispeech(uri: str, fs, root: str) -> pa.Table:
    """Rows for every transcript line and every audio file (audio without transcript: text null)."""
    files = sorted(fs.find(root))
    texts: dict[str, str] = {}
    audio: dict[str, str] = {}
    for f in files:
        name = posixpath.basename(f)
        if name.endswith(".trans.txt"):
            content = fs.cat_file(f).decode("utf-8-sig")
            for line in content.splitlines():
                if line.strip():
                    utt, _, words = line.strip().partition(" ")
                    texts[posixpath.join(posixpath.dirname(f), utt)] = words.strip()
        elif name.lower().endswith(_AUDIO_EXTS):
            audio[posixpath.splitext(f)[0]] = f
    base = uri.rstrip("/")
    root = root.rstrip("/")
    rows = []
    for stem in sorted(set(texts) | set(audio)):
        rel = posixpath.relpath(audio.get(stem, stem + ".flac"), root)
        parts = posixpath.dirname(posixpath.relpath(stem, root)).split("/")
        chapter = parts[-1] if len(parts) >= 1 and parts[-1] else None
        speaker = parts[-2] if len(parts) >= 2 else None
        # split is the directory above <speaker>; when `uri` is a split dir itself, use its name
        split = parts[-3] if len(parts) >= 3 else posixpath.basename(root)
        rows.append({"id": posixpath.basename(stem), "audio_uri": storage.join(base, rel),
                     "offset_s": None, "duration_s": None, "text": texts.get(stem),
                     "split": split, "speaker": speaker, "chapter": chapter, "extra": "{}"})
    return pa.Table.from_pylist(rows, schema=SCHEMA)
