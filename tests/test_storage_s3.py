"""Manifests and audio read from a real S3 server (moto on 127.0.0.1): relative paths, env config,
missing objects, and a genuine 403."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from sew_pipeline import audio, storage
from sew_pipeline.errors import ItemError
from sew_pipeline.manifests import read_manifest
from tests.support.paths import LIBRISPEECH_ROOT


@pytest.fixture(scope="module")
def corpus(s3_server):
    """LibriSpeech fixtures plus a stereo mu-law call and manifests, uploaded once."""
    root = s3_server.upload_dir(LIBRISPEECH_ROOT, "corpus", "LibriSpeech")
    sr, t = 8000, np.arange(8000 * 6) / 8000
    call = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.25 * np.sin(2 * np.pi * 300 * t)], 1)
    buf = io.BytesIO()
    sf.write(buf, call, sr, format="WAV", subtype="ULAW")
    s3_server.put("corpus", "calls/audio/2024/call-1.wav", buf.getvalue())
    rows = [{"audio_filepath": "../audio/2024/call-1.wav", "duration": 6.0, "text": "hi"},
            {"audio_filepath": "../audio/2024/gone.wav", "text": "lost"}]
    s3_server.put("corpus", "calls/manifests/calls.jsonl", "\n".join(json.dumps(r) for r in rows))
    s3_server.put("corpus", "calls/manifests/calls.csv",
                  "audio_filepath,duration,text\n../audio/2024/call-1.wav,6.0,hi\n../audio/2024/gone.wav,,lost\n")
    pbuf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), pbuf)
    s3_server.put("corpus", "calls/manifests/calls.parquet", pbuf.getvalue())
    return root


def test_librispeech_layout_from_s3_decodes_sample_exact(s3_server, corpus):
    t = read_manifest(corpus, s3_server.storage_options)
    rows = t.to_pylist()
    assert [r["id"] for r in rows] == ["1272-128104-0000", "1272-141231-0002", "1995-1837-0001"]
    assert rows[0]["audio_uri"] == "s3://corpus/LibriSpeech/dev-clean/1272/128104/1272-128104-0000.flac"
    assert rows[2]["split"] == "test-clean" and rows[0]["text"].startswith("MISTER QUILTER")
    for r in rows:
        local = LIBRISPEECH_ROOT / r["split"] / r["speaker"] / r["chapter"] / f"{r['id']}.flac"
        ref, _ = sf.read(local, dtype="float32")
        [(_, y)] = audio.load(r, storage_options=s3_server.storage_options)
        np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("name", ["calls.jsonl", "calls.csv", "calls.parquet"])
def test_manifest_on_s3_with_relative_paths(s3_server, corpus, name):
    opts = s3_server.storage_options
    t = read_manifest(f"s3://corpus/calls/manifests/{name}", opts)
    ok, gone = t.to_pylist()
    assert ok["audio_uri"] == "s3://corpus/calls/audio/2024/call-1.wav"
    assert ok["id"] == "../audio/2024/call-1.wav" and ok["duration_s"] == 6.0
    items = audio.load(ok, storage_options=opts, channels="split")
    assert [c for c, _ in items] == [0, 1] and all(len(y) == 6 * 16000 for _, y in items)
    with pytest.raises(ItemError) as e:
        audio.load(gone, storage_options=opts)
    assert e.value.error_type == "missing" and "s3://corpus/calls/audio/2024/gone.wav" in e.value.message


def test_window_of_remote_call_streams(s3_server, corpus):
    row = {"audio_uri": "s3://corpus/calls/audio/2024/call-1.wav", "offset_s": 1.0, "duration_s": 4.0}
    chunks = list(audio.iter_chunks(row, storage_options=s3_server.storage_options, channels="split",
                                    window_s=2.0, overlap_s=0.5))
    assert {c.channel for c in chunks} == {0, 1}
    assert max(c.window.end for c in chunks) == 4 * 16000


def test_env_only_configuration(s3_server, corpus, monkeypatch):
    """Standard AWS env vars are enough: endpoint, keys, region."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    t = read_manifest("s3://corpus/calls/manifests/calls.jsonl")
    assert t.num_rows == 2
    data = storage.read_bytes(t.column("audio_uri")[0].as_py(), storage.storage_options())
    assert data[:4] == b"RIFF"
    with pytest.raises(ItemError) as e:
        storage.read_bytes("s3://corpus/calls/audio/none.wav", storage.storage_options())
    assert e.value.error_type == "missing" and s3_server.secret not in e.value.message


def test_missing_bucket_and_key(s3_server, corpus):
    for uri in ("s3://corpus/nope/x.flac", "s3://no-such-bucket-here/x.flac"):
        with pytest.raises(ItemError) as e:
            storage.read_bytes(uri, s3_server.storage_options)
        assert e.value.error_type == "missing" and uri in e.value.message


def test_access_denied_is_permission_and_leaks_no_credentials(s3_server_strict):
    server, opts = s3_server_strict
    uri = "s3://private/calls/secret-call.wav"
    with pytest.raises(ItemError) as e:
        audio.load({"audio_uri": uri}, storage_options=opts)
    err = e.value
    assert err.error_type == "permission" and uri in err.message
    assert opts["key"] not in err.message and opts["secret"] not in err.message
    assert err.as_row() == {"error_type": "permission", "error": err.message}
