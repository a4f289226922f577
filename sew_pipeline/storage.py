"""fsspec helpers: storage options, reads that fail as typed `ItemError`s, URI joins.

Local paths and any fsspec URI work; S3 (s3:// via s3fs) gets its options from the job config
merged over the standard AWS environment, so the same job runs against AWS, MinIO or a local test server.
"""
from __future__ import annotations

import contextlib
import copy
import os
import posixpath
from collections.abc import Iterator, Mapping
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from sew_pipeline.errors import ItemError, register_secrets, secrets_in_options

_S3_PROTOCOLS = ("s3", "s3a")
_TRUE = {"1", "true", "yes", "on"}

# Friendly config spellings -> s3fs spellings (config wins over env).
_ALIASES = {
    "aws_access_key_id": "key", "access_key_id": "key", "access_key": "key",
    "aws_secret_access_key": "secret", "secret_access_key": "secret", "secret_key": "secret",
    "aws_session_token": "token", "session_token": "token",
    "anonymous": "anon", "no_sign_request": "anon",
}
# botocore client settings for every s3:// filesystem, unless the config gives its own `config_kwargs`: transient S3
# failures (503 SlowDown, 500, throttling, dropped connections) are retried by botocore itself with
# bounded exponential backoff; "adaptive" also rate-limits the client after throttling responses.
# s3fs adds its own bounded retry loop (`retries`, default 5) for errors botocore does not retry.
S3_RETRY_DEFAULTS: dict[str, Any] = {
    "retries": {"max_attempts": 8, "mode": "adaptive"},
    "connect_timeout": 10,
    "read_timeout": 60,
}


def storage_options(cfg_opts: Mapping[str, Any] | None = None,
                    env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs-style options from config `cfg_opts` over the standard AWS environment.

    Env: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_NO_SIGN_REQUEST (anonymous).
    Config may use s3fs names (key, secret, token, anon, client_kwargs, ...) or the aliases
    endpoint_url, region, aws_access_key_id, aws_secret_access_key, session_token, anonymous.
    Secret values are registered with `errors.redact`.
    """
    env = os.environ if env is None else env
    opts: dict[str, Any] = {}
    client: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    for env_name, opt in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                          ("AWS_SESSION_TOKEN", "token")):
        if env.get(env_name):
            opts[opt] = env[env_name]
    if env.get("AWS_NO_SIGN_REQUEST", "").lower() in _TRUE:
        opts["anon"] = True

    for k, v in (cfg_opts or {}).items():
        if v is None:
            continue
        if k == "endpoint_url":
            client["endpoint_url"] = v
        elif k in ("region", "region_name"):
            client["region_name"] = v
        elif k == "client_kwargs":
            client.update(v)
        else:
            opts[_ALIASES.get(k, k)] = v
    if isinstance(opts.get("anon"), str):
        opts["anon"] = opts["anon"].lower() in _TRUE
    if opts.get("anon"):  # anonymous means unsigned: drop any credentials picked up from env
        for k in ("key", "secret", "token"):
            opts.pop(k, None)
    if client:
        opts["client_kwargs"] = client
    register_secrets(secrets_in_options(opts))
    return opts


def protocol(uri: str) -> str:
    """'s3', 'gs', ... or 'file' for local paths."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def is_remote(uri: str) -> bool:
    return protocol(uri) != "file"


def _options_for(uri: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    # S3 options mean nothing to (and would confuse) other filesystems: pass them to s3 only.
    proto = protocol(uri)
    if proto == "file":
        return {}
    if proto in _S3_PROTOCOLS:
        opts = dict(options or {})
        # deep copy: botocore rewrites the retries dict it is given (max_attempts -> total_max_attempts)
        opts["config_kwargs"] = copy.deepcopy({**S3_RETRY_DEFAULTS, **(opts.get("config_kwargs") or {})})
        return opts
    s3_only = ("key", "secret", "token", "anon", "client_kwargs", "config_kwargs")
    return {k: v for k, v in (options or {}).items() if k not in s3_only}


def filesystem(uri: str, options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fs, path) for a URI; the fs instance is cached by fsspec per options."""
    return url_to_fs(uri, **_options_for(uri, options))


def to_item_error(exc: BaseException, uri: str, options: Mapping[str, Any] | None = None) -> ItemError:
    """Map a storage exception to a typed, redacted ItemError naming `uri`."""
    if isinstance(exc, ItemError):
        return exc
    secrets = secrets_in_options(options)
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # raw botocore ClientError
        code = str(response.get("Error", {}).get("Code", ""))
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, FileNotFoundError) or code in ("404", "NoSuchKey", "NoSuchBucket"):
        return ItemError("missing", f"not found ({detail})", uri, secrets)
    if isinstance(exc, PermissionError) or code in ("403", "AccessDenied", "InvalidAccessKeyId"):
        return ItemError("permission", f"access denied ({detail})", uri, secrets)
    if isinstance(exc, IsADirectoryError):
        return ItemError("unreadable", f"is a directory ({detail})", uri, secrets)
    return ItemError("unreadable", f"read failed ({detail})", uri, secrets)


@contextlib.contextmanager
def open_input(uri: str | None, options: Mapping[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """Open `uri` for seekable binary reading; storage failures raise `ItemError`.

    Remote objects are read lazily in blocks, so decoding a window of an hours-long file fetches
    little more than that window. Exceptions raised by the caller's body are not remapped, except
    storage OSErrors surfacing from lazy reads.
    """
    if not uri:
        raise ItemError("missing", "no audio path in manifest row")
    try:
        fs, path = filesystem(uri, options)
        f = fs.open(path, "rb")
    except Exception as exc:  # noqa: BLE001 - every storage failure becomes item data
        raise to_item_error(exc, uri, options) from None
    try:
        yield f
    except ItemError:
        raise
    except OSError as exc:
        raise to_item_error(exc, uri, options) from None
    finally:
        with contextlib.suppress(Exception):
            f.close()


def read_bytes(uri: str | None, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Whole object as bytes; raises ItemError('missing'/'permission'/'unreadable')."""
    with open_input(uri, storage_options) as f:
        return f.read()


def read_text(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    return read_bytes(uri, storage_options).decode("utf-8-sig")


def normalise(uri: str) -> str:
    """Canonical form for prefix checks: local paths resolved (symlinks, '..'), remote keys normalised."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" not in uri:
        return os.path.realpath(uri)
    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    return f"{scheme.lower()}://{bucket}/{key}"


def allowed(uri: str | None, prefixes: list[str] | tuple[str, ...]) -> bool:
    """True when there is no allow-list, or `uri` lies under one of `prefixes` (whole path segments:
    s3://a/calls allows s3://a/calls/x.wav, not s3://a/calls-old/x.wav)."""
    if not prefixes:
        return True
    if not uri:
        return False
    target = normalise(uri)
    for prefix in prefixes:
        base = normalise(prefix).rstrip("/")
        if target == base or target.startswith(base + "/"):
            return True
    return False


def dirname(uri: str) -> str:
    """Parent 'directory' of a file URI (keeps the scheme and bucket)."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(uri))


def join(base: str, rel: str) -> str:
    """Resolve `rel` against directory `base`.

    URIs with a scheme and absolute local paths are returned as they are; '..' is normalised.
    `file://` prefixes are stripped so local paths stay plain paths.
    """
    if rel.startswith("file://"):
        return rel[len("file://"):]
    if "://" in rel or os.path.isabs(rel):
        return rel
    if base.startswith("file://"):
        base = base[len("file://"):]
    if "://" in base:
        scheme, rest = base.split("://", 1)
        bucket, _, key = rest.partition("/")
        joined = posixpath.normpath(posixpath.join("/", key, rel)).lstrip("/")
        return f"{scheme}://{bucket}/{joined}"
    return os.path.normpath(os.path.join(os.path.abspath(base), rel))
