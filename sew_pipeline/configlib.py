"""Config machinery: dataclasses loaded from YAML plus ``--set key=value`` overrides (the job configs: config.py).

Any dataclass works as a config: each field needs a default and a ``help`` entry in its
metadata (``opt(default, "help text")``). Nested dataclass fields are sections addressed
with dotted keys (``--set inference.num_actors=2``); ``dict`` fields accept dotted subkeys
(``--set storage_options.endpoint_url=http://...``) or a whole YAML mapping.
Unknown keys and wrong types raise :class:`ConfigError` naming the key, never the value
of a secret-looking key.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")
_SECRET_WORDS = ("secret", "key", "token", "password")


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, missing value)."""


def opt(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with a default and its ``--help`` text; mutable defaults are copied."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


# ---------------------------------------------------------------- type checking
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_secret(key: str) -> bool:
    return any(w in key.lower() for w in _SECRET_WORDS)


def _describe(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against type ``tp``; allows int→float and str numbers from --set."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise _type_error(key, value, tp)
    if origin is typing.Literal:
        if isinstance(value, bool) and {"yes", "no"} <= set(args):
            value = "yes" if value else "no"  # YAML 1.1 reads a bare yes/no as a bool
        if value in args:
            return value
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {_show(key, value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _type_error(key, value, tp)
        return _build(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, tp)
        item_tp = args[0] if args else Any
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(f"{key}.{k}", v, val_tp) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. --set region=1 parsed by YAML as a number
        raise _type_error(key, value, tp)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _type_error(key, value, tp)


def _show(key: str, value: Any) -> str:
    return "<redacted>" if _is_secret(key) else repr(value)


def _type_error(key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {_describe(tp)}, got {type(value).__name__} {_show(key, value)}")


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)}; "
            f"known keys: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        field = fields[name]
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and field.default_factory is not dataclasses.MISSING:
            # a partial section override keeps this config's defaults for that section
            base = field.default_factory()
            value = {**{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}, **value}
        kwargs[name] = _coerce(prefix + name, value, hints[name])
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


# ---------------------------------------------------------------- loading
def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], yaml-parsed value); a bare string stays a string."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item.split('=')[0]!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError("--set expects key=value with a non-empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _assign(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def load_config(cls: type[T], yaml_path: str | Path | None = None, sets: Sequence[str] = ()) -> T:
    """Build ``cls`` from defaults, then the YAML file, then each ``--set key=value``."""
    data: dict = {}
    if yaml_path:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of key: value")
        data = loaded
    for item in sets:
        key_path, value = parse_set(item)
        _assign(data, key_path, value)
    return _build(cls, data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def redacted_dict(cfg: Any) -> dict:
    """The config as a dict with secret-looking values replaced (safe to log)."""
    def walk(obj: Any, key: str = "") -> Any:
        if isinstance(obj, dict):
            return {k: walk(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, key) for v in obj]
        return "<redacted>" if obj is not None and _is_secret(key) else obj
    return walk(to_dict(cfg))


# ---------------------------------------------------------------- command line
def help_text(cls: type, prefix: str = "") -> str:
    """One line per option: key, type, default and its help, sections expanded."""
    hints = _type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"  {prefix}{f.name}.*  ({f.metadata.get('help', '')})")
            lines.append(help_text(tp, prefix=f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {prefix}{f.name} ({_describe(tp)}, default: {default!r})\n"
                     f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def arg_parser(cls: type, description: str, default_config: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (YAML file or --set key=value; values are parsed as YAML):\n" + help_text(cls),
    )
    parser.add_argument("--config", default=default_config, help="YAML config file (default: %(default)s)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key; repeatable; dotted keys reach into sections/dicts")
    return parser


def parse_args(cls: type[T], argv: Sequence[str] | None, description: str,
               default_config: str | None = None) -> T:
    """argparse → :func:`load_config`; config errors exit with status 2 and a one-line message."""
    parser = arg_parser(cls, description, default_config)
    args = parser.parse_args(argv)
    try:
        return load_config(cls, args.config, args.sets)
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")
