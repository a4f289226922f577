"""Manifests -> one Arrow table with a stable `id` per row (the join key everywhere downstream).

Accepted inputs (local path or any fsspec URI; one of them, or a folder / glob / list of parts):
- JSONL (NeMo style: audio_filepath, duration, offset, text; any other keys kept in `extra`),
- CSV / TSV with a header row, Parquet (same column names as JSONL),
- a directory in the LibriSpeech layout: <split>/<speaker>/<chapter>/*.flac + <speaker>-<chapter>.trans.txt.
Relative audio paths resolve against the manifest's own location. Structural problems with the manifest
itself (missing, unparsable line, duplicate given ids) raise ManifestError naming the manifest;
per-audio problems are left to decoding, which turns them into error rows.
"""
from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fsspec.compression
import fsspec.utils
import pyarrow as pa
import pyarrow.parquet as pq

from sew_pipeline import storage
from sew_pipeline.errors import UserError, redact

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


class ManifestError(UserError):
    """The manifest itself cannot be used (missing, unparsable, no audio column, duplicate given ids)."""


_PART_EXTS = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq")
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_GLOB_CHARS = "*?["


def read_manifest(uri: str | Sequence[str], storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """Read a manifest into a table with `SCHEMA` (one row per input row, in input order).

    ``uri`` is one manifest file, a folder of manifest parts, a glob of parts, a LibriSpeech root, or a
    list of any of these (local or any fsspec URI). Parts are read in sorted order, fetched concurrently
    (one request per part on object storage); ids are unique across all parts.
    """
    opts = storage_options if storage_options is not None else storage.storage_options()
    ids = _Ids()
    tables = []
    for given in [uri] if isinstance(uri, str) else list(uri):
        fs, path, parts = _expand(given, opts)
        if parts is None:  # a LibriSpeech root
            tables.append(_librispeech(given, fs, path))
            continue
        for part, data in zip(parts, _fetch(fs, parts)):
            tables.append(_normalise(_records(part, data), storage.dirname(part), part, ids))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _expand(uri: str, opts: Mapping[str, Any]) -> tuple[Any, str, list[str] | None]:
    """(fs, path, part URIs) for one manifest argument; parts None for a LibriSpeech root."""
    fs, path = storage.filesystem(uri, opts)

    def full(p: str) -> str:
        return fs.unstrip_protocol(p) if storage.is_remote(uri) else p
    if any(c in path for c in _GLOB_CHARS):
        found = sorted(p for p in fs.glob(path) if _is_part(p) and not fs.isdir(p))
        if not found:
            raise ManifestError(f"manifest {redact(uri)}: no manifest part ({', '.join(_PART_EXTS)}) matches")
        return fs, path, [full(p) for p in found]
    if fs.isdir(path):
        files = sorted(fs.find(path))
        parts = [full(f) for f in files if _is_part(f)]
        if any(f.endswith(".trans.txt") for f in files) or (
                not parts and any(f.lower().endswith(_AUDIO_EXTS) for f in files)):
            return fs, path, None
        if not parts:
            raise ManifestError(f"manifest folder {redact(uri)} holds neither manifest parts "
                                f"({', '.join(_PART_EXTS)}) nor a LibriSpeech layout (audio + *.trans.txt)")
        return fs, path, parts
    if not fs.exists(path):
        raise ManifestError(f"manifest {redact(uri)}: not found (set `manifest` to a file, folder or glob)")
    return fs, path, [uri]


def _is_part(path: str) -> bool:
    name = path.lower()
    for suffix in _COMPRESSIONS:
        name = name.removesuffix(suffix)
    return name.endswith(_PART_EXTS) and not posixpath.basename(name).startswith((".", "_"))


def _fetch(fs, parts: list[str]) -> list[bytes]:
    """Bytes of every part; async filesystems (s3fs) fetch them concurrently in one call."""
    paths = [fs._strip_protocol(p) for p in parts]
    found = fs.cat(paths, on_error="return") if len(paths) > 1 else {paths[0]: fs.cat_file(paths[0])}
    for part, path in zip(parts, paths):
        if isinstance(found.get(path), BaseException):
            raise ManifestError(f"manifest part {redact(part)}: cannot read: {redact(str(found[path]))}")
    return [found[p] for p in paths]


def _records(uri: str, data: bytes) -> Iterable[dict]:
    name = uri.lower()
    compression = fsspec.utils.infer_compression(name)
    if compression:
        with fsspec.compression.compr[compression](io.BytesIO(data)) as f:
            data = f.read()
    for suffix in _COMPRESSIONS:
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        try:
            return pq.read_table(io.BytesIO(data)).to_pylist()
        except pa.ArrowInvalid as exc:
            raise ManifestError(f"{redact(uri)}: not a readable Parquet file: {exc}") from None
    text = data.decode("utf-8-sig")
    if name.endswith((".csv", ".tsv")):
        return csv.DictReader(io.StringIO(text), delimiter="\t" if name.endswith(".tsv") else ",")
    return _jsonl(text, uri)  # .jsonl / .json / .ndjson / anything else: JSON lines


def _jsonl(text: str, uri: str) -> Iterable[dict]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{uri}: line {lineno} is not valid JSON: {exc.msg}") from None
        if not isinstance(rec, dict):
            raise ManifestError(f"{uri}: line {lineno} is not a JSON object")
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
        raise ManifestError(f"{manifest}: row {row}: {field}={value!r} is not a number") from None


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


class _Ids:
    """Ids seen so far, across all parts of one manifest: given duplicates are an error, derived
    duplicates (the same file listed twice) get a ~n suffix."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, int]] = {}  # id -> (part, row) where it first appeared
        self.dups: dict[str, int] = {}


def _normalise(records: Iterable[dict], base: str, manifest: str, ids: _Ids | None = None) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    ids = ids or _Ids()
    seen, dups = ids.seen, ids.dups
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
                first, first_row = seen[rid]
                where = f"rows {first_row} and {row}" if first == manifest else f"row {row}; first in {first}"
                raise ManifestError(f"{manifest}: duplicate id {rid!r} ({where})")
            dups[rid] = dups.get(rid, 0) + 1
            rid = f"{rid}~{dups[rid]}"  # same segment listed twice: both rows kept, ids stay in input order
        seen[rid] = (manifest, row)
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
