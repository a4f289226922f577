"""Typed per-item errors and secret redaction.

Failures on one audio item never escape a batch as exceptions: the stage that hits one raises
`ItemError`, catches it at the item boundary and writes `error_type` / `error` into that item's row.
Every message goes through `redact()` first, so no credential can reach an output file or a log.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Stable vocabulary of `error_type` values (downstream reports group by these).
ERROR_TYPES: tuple[str, ...] = (
    "missing",             # object/file does not exist (404, NoSuchKey, FileNotFoundError), or no path given
    "permission",          # storage refused access (403, AccessDenied, PermissionError)
    "unreadable",          # a known audio container that is corrupt/truncated, or an I/O failure while reading
    "unsupported_format",  # bytes are not an audio format/codec libsndfile can decode (or bad channel request)
    "empty",               # zero-length object or zero samples in the requested window
    "non_finite",          # NaN or +-inf samples in the decoded audio
    "too_long",            # duration above the configured max_duration_s (checked from the header)
    "not_allowed",         # audio_uri outside the configured allowed_prefixes (never opened)
    "inference",           # the model failed on the item's batch (message redacted)
    "internal",            # any other unexpected failure in our code for this item (message redacted)
)

# Environment variables whose values are secrets (key ids are treated as secrets too).
_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
)
# Storage-option keys (s3fs/botocore spellings) whose values are secrets.
_SECRET_OPTION_KEYS = {
    "key", "secret", "token", "password", "session_token", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "access_key", "secret_key", "account_key", "sas_token",
}
_MIN_SECRET_LEN = 4  # shorter values would scrub ordinary words

# Values registered by storage.storage_options() so later redact() calls scrub them without arguments.
_registered: set[str] = set()

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_KEY_VALUE = re.compile(
    r"(?i)(?P<name>[\w.-]*(?:secret|token|password|passwd|signature|credential|access[_-]?key(?:[_-]?id)?|api[_-]?key)[\w.-]*)"
    r"(?P<sep>\s*=\s*[\"']?|[\"']\s*:\s*[\"']?)(?P<value>[^\s&\"',;}]+)"
)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b")


def secrets_in_options(options: Mapping[str, Any] | None) -> set[str]:
    """All secret values found (recursively) in a storage-options mapping."""
    found: set[str] = set()
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            found |= secrets_in_options(v)
        elif isinstance(v, str) and k.lower() in _SECRET_OPTION_KEYS:
            found.add(v)
    return found


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values (e.g. from config storage options) for every later `redact()`."""
    _registered.update(v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LEN)


def redact(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """Remove credentials from `text`.

    Scrubs: values of known secret env vars, registered storage-option secrets and `extra_secrets`;
    `user:pass@` in URIs; `name=value` pairs whose name looks like a secret (secret, token, signature,
    credential, access_key...); AWS access-key-id shaped strings.
    """
    text = str(text)
    known = set(_registered)
    known.update(os.environ.get(name, "") for name in _SECRET_ENV)
    known.update(s for s in extra_secrets if isinstance(s, str))
    for value in sorted((v for v in known if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True):
        text = text.replace(value, "***")
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    text = _KEY_VALUE.sub(lambda m: m.group("name") + m.group("sep") + "***", text)
    return _AWS_KEY_ID.sub("***", text)


class UserError(ValueError):
    """A mistake in what the user asked for (manifest, model, output, cluster plan): the job prints
    this one line and exits 2; tracebacks are kept for our own bugs."""


class ItemError(Exception):
    """A failure that belongs to one item. `message` is redacted and names the URI."""

    def __init__(self, error_type: str, message: str, uri: str | None = None,
                 extra_secrets: Iterable[str] = ()) -> None:
        if error_type not in ERROR_TYPES:
            raise ValueError(f"unknown error_type {error_type!r}; expected one of {ERROR_TYPES}")
        text = f"{error_type}: {uri}: {message}" if uri else f"{error_type}: {message}"
        self.error_type = error_type
        self.uri = redact(uri, extra_secrets) if uri else uri
        self.message = redact(text, extra_secrets)
        super().__init__(self.message)

    def as_row(self) -> dict[str, str]:
        """The two row columns an error occupies in every stage's output."""
        return {"error_type": self.error_type, "error": self.message}
