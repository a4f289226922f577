"""Manifests from local files (JSONL, CSV, TSV, Parquet, LibriSpeech layout); stable ids; redaction."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sew_pipeline import storage
from sew_pipeline.errors import ItemError, redact
from sew_pipeline.manifests import SCHEMA, read_manifest
from tests.support.paths import LIBRISPEECH_ROOT

ROWS = [
    {"audio_filepath": "audio/a.wav", "duration": 1.5, "text": "hello world", "lang": "en"},
    {"audio_filepath": "../other/b.flac", "duration": 2.0, "offset": 0.5, "text": "bye", "speaker": 7},
    {"id": "given-3", "audio_filepath": "/abs/c.wav", "text": None},
]


def test_jsonl_nemo_style(tmp_path):
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    t = read_manifest(str(path))
    assert t.schema == SCHEMA
    rows = t.to_pylist()
    assert [r["audio_uri"] for r in rows] == [str(tmp_path / "m/audio/a.wav"), str(tmp_path / "other/b.flac"), "/abs/c.wav"]
    assert [r["id"] for r in rows] == ["audio/a.wav", "../other/b.flac@0.500+2.000", "given-3"]
    assert rows[0]["duration_s"] == 1.5 and rows[0]["offset_s"] is None and rows[1]["offset_s"] == 0.5
    assert rows[0]["text"] == "hello world" and rows[2]["text"] is None
    assert json.loads(rows[0]["extra"]) == {"lang": "en"} and rows[1]["speaker"] == "7"


def test_ids_are_stable_across_formats_and_locations(tmp_path):
    """The same manifest as JSONL, CSV and Parquet, in two places, gives the same ids."""
    ids = []
    for sub in ("x", "y/z"):
        d = tmp_path / sub
        d.mkdir(parents=True)
        (d / "m.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[:2]))
        cols = ["audio_filepath", "duration", "offset", "text"]
        (d / "m.csv").write_text("audio_filepath,duration,offset,text\naudio/a.wav,1.5,,hello world\n"
                                 "../other/b.flac,2.0,0.5,bye\n")
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in ROWS[:2]]), d / "m.parquet")
        for name in ("m.jsonl", "m.csv", "m.parquet"):
            t = read_manifest(str(d / name))
            ids.append(t.column("id").to_pylist())
            assert t.column("duration_s").to_pylist() == [1.5, 2.0]
            assert t.column("audio_uri").to_pylist()[0] == str(d / "audio/a.wav")
    assert all(i == ids[0] for i in ids) and len(set(ids[0])) == 2


def test_tsv_and_duplicates(tmp_path):
    p = tmp_path / "m.tsv"
    p.write_text("path\ttranscript\na.wav\tone\na.wav\tone again\nb.wav\ttwo\n")
    t = read_manifest(str(p))
    assert t.column("id").to_pylist() == ["a.wav", "a.wav~1", "b.wav"]  # no row lost, ids unique
    assert t.column("text").to_pylist() == ["one", "one again", "two"]
    given = tmp_path / "dup.jsonl"
    given.write_text('{"id": "u1", "audio_filepath": "a.wav"}\n{"id": "u1", "audio_filepath": "b.wav"}\n')
    with pytest.raises(ValueError, match="duplicate id 'u1'"):
        read_manifest(str(given))


def test_bad_jsonl_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"audio_filepath": "a.wav"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        read_manifest(str(p))


def test_row_without_path_is_kept_and_fails_as_missing(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"text": "orphan"}\n')
    [row] = read_manifest(str(p)).to_pylist()
    assert row["id"] == "row-0" and row["audio_uri"] is None
    from sew_pipeline.audio import load
    with pytest.raises(ItemError) as e:
        load(row, storage_options={})
    assert e.value.error_type == "missing"


def test_librispeech_layout():
    t = read_manifest(str(LIBRISPEECH_ROOT))
    rows = {r["id"]: r for r in t.to_pylist()}
    assert set(rows) == {"1272-128104-0000", "1272-141231-0002", "1995-1837-0001"}
    r = rows["1272-128104-0000"]
    assert (r["split"], r["speaker"], r["chapter"]) == ("dev-clean", "1272", "128104")
    assert r["text"].startswith("MISTER QUILTER IS THE APOSTLE")
    assert os.path.isfile(r["audio_uri"])
    assert rows["1995-1837-0001"]["split"] == "test-clean"
    split_only = read_manifest(str(LIBRISPEECH_ROOT / "dev-clean"))
    assert {r["split"] for r in split_only.to_pylist()} == {"dev-clean"} and split_only.num_rows == 2


def test_join_rules():
    assert storage.join("s3://bkt/corpus/manifests", "../audio/a.wav") == "s3://bkt/corpus/audio/a.wav"
    assert storage.join("s3://bkt/m", "gs://other/x.wav") == "gs://other/x.wav"
    assert storage.join("/data/m", "./a/b.wav") == "/data/m/a/b.wav"
    assert storage.join("/data/m", "file:///x/y.wav") == "/x/y.wav"


def test_storage_options_from_env_and_config():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY000001",
           "AWS_SECRET_ACCESS_KEY": "env-secret-value", "AWS_DEFAULT_REGION": "eu-west-1"}
    opts = storage.storage_options(None, env=env)
    assert opts == {"key": "AKIAEXAMPLEKEY000001", "secret": "env-secret-value",
                    "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}}
    opts = storage.storage_options({"endpoint_url": "http://h:1", "aws_secret_access_key": "cfg-secret-xyz",
                                    "region": "us-east-2"}, env=env)
    assert opts["secret"] == "cfg-secret-xyz" and opts["client_kwargs"]["endpoint_url"] == "http://h:1"
    anon = storage.storage_options({"anonymous": True}, env=env)
    assert anon["anon"] is True and "key" not in anon and "secret" not in anon
    assert storage.storage_options(None, env={"AWS_NO_SIGN_REQUEST": "true"})["anon"] is True
    # secrets from config are remembered by redact() from now on
    assert "cfg-secret-xyz" not in redact("failed with cfg-secret-xyz inside")


def test_redact_scrubs_every_credential_shape(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envSecretValue123")
    text = ("s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@bucket/a.wav envSecretValue123 "
            "https://h/o?X-Amz-Credential=abc%2Fdef&X-Amz-Signature=f00d aws_session_token=tok123 "
            '{"secret": "s3cr3t!"} extra-pass-9')
    out = redact(text, extra_secrets=["extra-pass-9"])
    for secret in ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "envSecretValue123", "abc%2Fdef", "f00d",
                   "tok123", "s3cr3t!", "extra-pass-9"):
        assert secret not in out, out
    assert "s3://***@bucket/a.wav" in out
    assert redact("s3://bucket/secret-calls/x.wav: access denied") == "s3://bucket/secret-calls/x.wav: access denied"


def test_item_error_message_is_redacted():
    err = ItemError("permission", "denied for key=AKIAIOSFODNN7EXAMPLE", uri="s3://u:p4ss@b/x.wav")
    assert "AKIA" not in err.message and "p4ss" not in err.message and "b/x.wav" in err.message
    with pytest.raises(ValueError):
        ItemError("nonsense", "x")
