"""Export the conversations of a `segmentation.method: vad` job as files a person reads: one plain-text
transcript (.txt) and/or WebVTT subtitle file (.vtt, speaker = channel) per call.

  python jobs/export_conversations.py outputs/calls --to outputs/calls_text [--format txt vtt]
      [--speakers agent,customer] [--id CALL_ID ...] [--set storage_options.endpoint_url=...]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WRITERS = {"txt": "to_text", "vtt": "to_webvtt"}


def file_stem(id_: str) -> str:
    """An id as a file name: path separators and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", id_).strip("._") or "call"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", help="the job's output Parquet folder (local or s3://)")
    ap.add_argument("--to", required=True, help="local folder for the exported files")
    ap.add_argument("--format", nargs="+", choices=sorted(WRITERS), default=["txt", "vtt"])
    ap.add_argument("--speakers", default="", help="names for channels 0, 1, ... (comma-separated)")
    ap.add_argument("--id", dest="ids", action="append", default=[], help="only this call id (repeatable)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="storage_options.KEY=VALUE",
                    help="object storage access, as in the jobs")
    args = ap.parse_args(argv)
    from sew_pipeline import conversation
    from sew_pipeline.config import parse_set
    from sew_pipeline.results import read_results
    options: dict = {}
    for item in args.sets:
        path, value = parse_set(item)
        if len(path) != 2 or path[0] != "storage_options":
            ap.error(f"--set takes storage_options.KEY=VALUE, got {path[0]!r}")
        options[path[1]] = value
    table = read_results(args.output, options)
    rows = [] if table is None or "turns" not in table.column_names else [
        r for r in table.to_pylist() if r.get("level") == "conversation" and (not args.ids or r["id"] in args.ids)]
    if not rows:
        print(f"error: no conversation rows in {args.output} (written with segmentation.method=vad?)", file=sys.stderr)
        return 2
    out = Path(args.to)
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.speakers.split(",") if n.strip()]
    stems: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        stem = file_stem(row["id"])
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # two ids that read alike as file names
            stem = f"{stem}-{stems[stem]}"
        for fmt in args.format:
            (out / f"{stem}.{fmt}").write_text(getattr(conversation, WRITERS[fmt])(row, names))
    errors = sum(1 for r in rows if r.get("error_type"))
    print(f"exported {len(rows)} call(s) ({errors} with errors) as {', '.join(args.format)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
