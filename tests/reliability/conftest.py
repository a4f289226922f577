"""Fixtures for the fault-injection suite: an S3 server that enforces IAM (real 403s), and the
damaged/awkward audio files every fault case is built from."""
from __future__ import annotations

import dataclasses
import io
import json
import struct

import numpy as np
import pytest
import soundfile as sf

from tests.support.s3_server import S3Server, start_s3_server, stop_s3_server

READER_POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "s3:*",
    "Resource": ["arn:aws:s3:::corpus", "arn:aws:s3:::corpus/*", "arn:aws:s3:::results", "arn:aws:s3:::results/*"],
}]}


@pytest.fixture(scope="session")
def s3_iam():
    """moto with authentication and IAM enforced after setup. Yields an S3Server whose key/secret are
    those of a 'reader' user allowed on s3://corpus and s3://results only; s3://private/calls/secret-call.wav
    exists but that user gets a genuine 403 for it."""
    server = start_s3_server(unauthenticated_actions=7)  # exactly the 7 setup requests below
    try:
        s3, iam = server.client("s3"), server.client("iam")
        for bucket in ("corpus", "results", "private"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="private", Key="calls/secret-call.wav", Body=wav_bytes(2.0))
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="rw", PolicyDocument=json.dumps(READER_POLICY))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield dataclasses.replace(server, key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    finally:
        stop_s3_server(server)


# ------------------------------------------------------------------ audio builders
def tone(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * (180 + 13 * seed) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def wav_bytes(seconds: float, sr: int = 16000, seed: int = 0, fmt: str = "WAV", subtype: str = "PCM_16",
              samples: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, sr, seed) if samples is None else samples, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def unsupported_codec_wav() -> bytes:
    """A well-formed RIFF/WAVE whose codec tag (0x0161, WMA) libsndfile cannot decode."""
    fmt = struct.pack("<HHIIHH", 0x0161, 1, 16000, 32000, 2, 16)
    data = bytes(8000)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def corrupt_late_flac(seconds: float = 19.0, at: float = 0.9) -> bytes:
    """A FLAC that decodes cleanly for ``at`` of its bytes, then turns to garbage: it fails mid-stream,
    after a long item's first windows have already been sent on."""
    data = bytearray(wav_bytes(seconds, fmt="FLAC", seed=8))
    start = int(len(data) * at)
    data[start:start + 2000] = bytes((b * 7 + 13) % 256 for b in data[start:start + 2000])
    return bytes(data)


def fault_files() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, expected error_type or None for a good row that must get text)."""
    nan = tone(2.0)
    nan[5000:5010] = np.nan
    inf = tone(2.0, seed=2)
    inf[100] = np.inf
    flac = wav_bytes(3.0, fmt="FLAC", subtype="PCM_16", seed=3)
    pcm = wav_bytes(2.0, seed=7)
    return {
        "corrupt_header.wav": (pcm[:22] + b"\xff" * 14 + pcm[36:], "unreadable"),  # PCM tag, garbage fields
        "truncated.flac": (flac[: len(flac) // 2], "unreadable"),
        "corrupt_late.flac": (corrupt_late_flac(), "unreadable"),
        "zero_length.wav": (b"", "empty"),
        "silence.wav": (wav_bytes(2.0, samples=np.zeros(32000, np.float32)), None),
        "nan.wav": (wav_bytes(2.0, subtype="FLOAT", samples=nan), "non_finite"),
        "inf.wav": (wav_bytes(2.0, subtype="DOUBLE", samples=inf), "non_finite"),
        "unsupported_codec.wav": (unsupported_codec_wav(), "unsupported_format"),
        "too_long.flac": (wav_bytes(25.0, fmt="FLAC", seed=4), "too_long"),
        "flaky-throttle.wav": (wav_bytes(2.5, seed=5), None),
        "flaky-reset.wav": (wav_bytes(2.5, seed=6), None),
    }
