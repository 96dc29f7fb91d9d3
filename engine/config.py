"""Typed, frozen configs loaded from YAML, with dotted command-line overrides (style-anchors.md 2.3).

- YAML keys are dataclass field names; an unknown key or a value of the wrong type is a ``ConfigError`` naming the
  dotted key (``train.blr``) and the file.
- Overrides are ``key.sub=value`` strings; the value is parsed as YAML (``1e-4``, ``true``, ``[0.9, 0.95]``) and must
  have the field's type (nanoGPT's rule, over dataclasses instead of globals).
- ``config_hash`` is a hash of the resolved config: a stage whose output carries the same hash is up to date.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from engine.data.io import write_json

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match the config's dataclasses."""

    def __init__(self, message: str, *, key: str = "", file: str | Path | None = None):
        where = f"{file}: " if file else ""
        at = f"{key}: " if key else ""
        super().__init__(f"{where}{at}{message}")
        self.key, self.file = key, file


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, file: str | Path | None) -> Any:
    """``value`` checked (and, for tuples / nested dataclasses, converted) against type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key, file)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key, file=file)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"must be one of {', '.join(map(repr, args))}, got {value!r}", key=key, file=file)
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {value!r}", key=key, file=file)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ConfigError(f"expected {len(item_types)} values, got {len(value)}", key=key, file=file)
        pairs = enumerate(zip(value, item_types, strict=True))
        return tuple(_convert(v, t, f"{key}[{i}]", file) for i, (v, t) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key=key, file=file)
        return {_convert(k, args[0], key, file): _convert(v, args[1], f"{key}.{k}", file) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key, file=file)
    return _scalar(value, tp, key, file)


def _scalar(value: Any, tp: Any, key: str, file: str | Path | None) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", key=key, file=file)
    return value


def from_dict(cls: type[T], data: Any, *, prefix: str = "", file: str | Path | None = None) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys, missing required keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}", key=prefix, file=file)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise ConfigError(f"unknown key(s) {keys}; known: {', '.join(fields)}", key=prefix, file=file)
    values = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            values[name] = _convert(data[name], hints[name], key, file)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError("required key missing", key=key, file=file)
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.blr=1e-4'`` -> (['train', 'blr'], 0.0001)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads '1e-4' as a string
    return key.strip().split("."), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of the raw mapping with every dotted override set (types are checked later by ``from_dict``)."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("cannot set a sub-key of a scalar", key=".".join(path))
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file (ConfigError naming the file when it is missing or not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", file=path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=path) from exc
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", file=path)
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read ``path``, apply ``overrides``, and build ``cls`` (errors name the dotted key and the file)."""
    data = apply_overrides(read_yaml(path), overrides)
    return from_dict(cls, data, file=path)


def to_dict(config: Any) -> dict:
    """Plain JSON-able mapping of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_hash(config: Any) -> str:
    """Short, stable hash of the resolved config (key order does not matter)."""
    text = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_resolved(config: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a stage's outputs (YAML for people, JSON hash inside)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = {"config_hash": config_hash(config), **to_dict(config)}
    target = out_dir / name
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(yaml.safe_dump(body, sort_keys=False))
    tmp.replace(target)
    write_json(body, out_dir / (Path(name).stem + ".json"))
    return target
