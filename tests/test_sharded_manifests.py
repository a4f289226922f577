"""A manifest given as a folder, a glob or a list of parts (local and s3://) reads as the joined manifest."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sew_pipeline.manifests import ManifestError, read_manifest


def rows(n0: int, n1: int) -> list[dict]:
    return [{"audio_filepath": f"audio/{i:05d}.wav", "text": f"utt {i}", "speaker": str(i % 3)} for i in range(n0, n1)]


def write_parts(root, fmt_rows):
    """Three parts in three formats plus things that are not parts; returns the joined rows in sorted-part order."""
    (root / "audio").mkdir(parents=True)
    (root / "part-000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fmt_rows[0]))
    with gzip.open(root / "part-001.csv.gz", "wt") as f:
        f.write("audio_filepath,text,speaker\n" + "".join(f"{r['audio_filepath']},{r['text']},{r['speaker']}\n"
                                                          for r in fmt_rows[1]))
    pq.write_table(pa.Table.from_pylist(fmt_rows[2]), root / "part-002.parquet")
    (root / "_SUCCESS").write_text("")          # marker files and notes are not parts
    (root / "README.txt").write_text("notes")
    return fmt_rows[0] + fmt_rows[1] + fmt_rows[2]


@pytest.fixture
def parts(tmp_path):
    root = tmp_path / "corpus"
    joined = write_parts(root, [rows(0, 40), rows(40, 70), rows(70, 100)])
    one = tmp_path / "joined" / "manifest.jsonl"  # beside the parts' folder: audio paths made absolute
    one.parent.mkdir()
    one.write_text("".join(json.dumps({**r, "audio_filepath": str(root / r["audio_filepath"]), "id": r["audio_filepath"]})
                           + "\n" for r in joined))
    return root, one


def comparable(table: pa.Table) -> list[tuple]:
    return [(r["id"], r["audio_uri"], r["text"], r["speaker"]) for r in table.to_pylist()]


def test_folder_glob_and_list_equal_the_joined_manifest(parts):
    root, one = parts
    expected = comparable(read_manifest(str(one)))
    assert len(expected) == 100
    assert comparable(read_manifest(str(root))) == expected
    assert comparable(read_manifest(str(root / "part-*"))) == expected
    assert comparable(read_manifest([str(root / "part-000.jsonl"), str(root / "part-00[12]*")])) == expected


def test_ids_are_unique_across_parts(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.jsonl").write_text(json.dumps({"id": "x", "audio_filepath": "1.wav"}) + "\n")
    (root / "b.jsonl").write_text(json.dumps({"id": "x", "audio_filepath": "2.wav"}) + "\n")
    with pytest.raises(ManifestError, match=r"duplicate id 'x'.*first in .*a\.jsonl"):
        read_manifest(str(root))
    # derived ids (no id given): the same file listed in two parts keeps both rows, ids stay distinct
    (root / "b.jsonl").write_text(json.dumps({"audio_filepath": "1.wav"}) + "\n")
    (root / "a.jsonl").write_text(json.dumps({"audio_filepath": "1.wav"}) + "\n")
    assert read_manifest(str(root)).column("id").to_pylist() == ["1.wav", "1.wav~1"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nothing-here.jsonl", "not found"),
    (lambda p: p / "no-match-*.jsonl", "no manifest part"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "neither manifest parts"),
])
def test_unusable_manifests_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(ManifestError, match=message) as err:
        read_manifest(str(make(tmp_path)))
    assert "\n" not in str(err.value)


def test_sharded_manifest_on_s3(s3_server, parts):
    root, one = parts
    bucket = s3_server.create_bucket("sharded")
    base = s3_server.upload_dir(root, bucket, "corpus")
    opts = s3_server.storage_options
    expected = [(i, u.replace(str(root), base), t, s) for i, u, t, s in comparable(read_manifest(str(one)))]
    by_folder = comparable(read_manifest(base, storage_options=opts))
    by_glob = comparable(read_manifest(base.rstrip("/") + "/part-00*", storage_options=opts))
    assert by_folder == by_glob == expected  # relative audio paths resolve inside the bucket
    assert by_folder[0][1] == f"s3://{bucket}/corpus/audio/00000.wav"
