"""Loading: TOML plus ``OTPD_<SECTION>__<KEY>`` environment overrides, coerced to the
section types, every problem of every section collected before one error is raised.

Strings in the environment are taken as they are; everything else is parsed as JSON
(``9000``, ``true``, ``["outbox"]``, ``[{"name": "web", "sha256": "..."}]``).
``OTPD_SECRET_KEY`` is a short alias for ``OTPD_SECURITY__SECRET_KEY``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from otpd.config.checks import Problem, raise_problems
from otpd.config.model import Config
from otpd.errors import ConfigError
from otpd.redaction import masked_url

__all__ = ["load_config", "masked_config"]


class _Invalid(Exception):
    """Problems found while coercing one value (collected, never shown as such)."""

    def __init__(self, problems: list[Problem], partial: Any = None) -> None:
        self.problems = problems
        self.partial = partial


def _toml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def _fail(key: str, text: str) -> _Invalid:
    return _Invalid([Problem(key, text)])


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise _fail(key, f"must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _fail(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, f"must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _fail(key, f"must be a list, got {value!r}")
        items, problems = [], []
        for i, item in enumerate(value):
            try:
                items.append(_coerce(item, args[0], f"{key}[{i}]"))
            except _Invalid as exc:
                problems += exc.problems
        if problems:
            raise _Invalid(problems)
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(key, f"must be a table, got {value!r}")
        return {
            _coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise _fail(key, f"must be a table, got {value!r}")
        return _build(tp, value, key)
    raise TypeError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    """An instance of the section ``cls``, or :class:`_Invalid` with all its problems."""
    hints = typing.get_type_hints(cls)
    fields = {_toml_key(f): f for f in dataclasses.fields(cls)}
    problems = [
        Problem(f"{prefix}.{k}", f"unknown key (known: {', '.join(sorted(fields))})")
        for k in sorted(set(data) - set(fields))
    ]
    kwargs = {}
    for k, f in fields.items():
        if k in data:
            try:
                kwargs[f.name] = _coerce(data[k], hints[f.name], f"{prefix}.{k}")
            except _Invalid as exc:
                problems += exc.problems
    try:
        # also with some keys refused: the section's own rules on the rest still speak
        instance = cls(**kwargs)
    except ConfigError as exc:
        problems += [Problem(*line.split(": ", 1)) for line in exc.problems]
    if problems:
        raise _Invalid(problems, _partial(cls, kwargs))
    return instance


def _partial(cls: type[Any], kwargs: dict[str, Any]) -> Any:
    """The section with the values that could be read, unchecked: only for running the
    rules across sections over what an operator did set (``env = "production"``)."""
    instance = object.__new__(cls)
    for f in dataclasses.fields(cls):
        value = kwargs[f.name] if f.name in kwargs else _default(f)
        object.__setattr__(instance, f.name, value)
    return instance


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{f.name} has no default")  # pragma: no cover - every field has one


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _env_overrides(
    env: Mapping[str, str], types: Mapping[str, type[Any]], problems: list[Problem]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if "OTPD_SECRET_KEY" in env:
        out.setdefault("security", {})["secret_key"] = env["OTPD_SECRET_KEY"]
    for name, raw in env.items():
        if not name.startswith("OTPD_") or "__" not in name:
            continue
        section, _, key = name[5:].lower().partition("__")
        if section not in types:
            problems.append(Problem(name, f"unknown config section {section!r}"))
            continue
        fields = {_toml_key(f): f for f in dataclasses.fields(types[section])}
        if key not in fields:
            problems.append(Problem(name, f"unknown key {section}.{key}"))
            continue
        tp = typing.get_type_hints(types[section])[fields[key].name]
        value: Any = raw
        if tp is not str and typing.get_origin(tp) is not Literal:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(Problem(name, f"not valid JSON ({exc.msg})"))
                continue
        out.setdefault(section, {})[key] = value
    return out


def _read(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> dict[str, Any]:
    explicit = path is not None or "OTPD_CONFIG" in env
    file = Path(path if path is not None else env.get("OTPD_CONFIG", "config.toml"))
    if not file.exists():
        if explicit:
            raise ConfigError(f"{file}: config file not found")
        return {}
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from exc


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> Config:
    """Load ``path`` (TOML), apply ``OTPD_*`` environment overrides and validate.

    ``path=None`` reads ``OTPD_CONFIG`` or else ``./config.toml`` if it exists; ``data`` is
    used instead of a file when given (embedding, tests). Raises one :class:`ConfigError`
    whose ``problems`` list everything that is wrong, one line each.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = dict(data) if data is not None else _read(path, env)
    types = _section_types()
    problems: list[Problem] = []
    for name in sorted(set(raw) - set(types)):
        problems.append(Problem(name, "unknown config section"))
        del raw[name]
    for name in [n for n, v in raw.items() if not isinstance(v, Mapping)]:
        problems.append(Problem(name, "must be a table"))
        del raw[name]
    raw = {name: dict(values) for name, values in raw.items()}
    for section, values in _env_overrides(env, types, problems).items():
        raw.setdefault(section, {}).update(values)
    sections: dict[str, Any] = {}
    for name, values in raw.items():
        try:
            sections[name] = _build(types[name], values, name)
        except _Invalid as exc:
            problems += exc.problems
            if exc.partial is not None:
                sections[name] = exc.partial
    if problems:
        # The rules across sections still run over what could be read, so that one run
        # shows everything; a key already reported is not reported twice.
        reported = {p.key for p in problems}
        cross = Config.problems(_unchecked(sections))
        problems += [p for p in cross if p.key not in reported]
        raise_problems(problems)
    return Config(**sections)


def _unchecked(sections: dict[str, Any]) -> Config:
    """A Config built without running its cross-section rules (to list them)."""
    config = object.__new__(Config)
    for f in dataclasses.fields(Config):
        object.__setattr__(config, f.name, sections.get(f.name) or _default(f))
    return config


def masked_config(config: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret masked (passwords inside URLs
    too)."""

    def dump(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                hidden = f.metadata.get("secret")
                out[_toml_key(f)] = ("********" if value else "") if hidden else dump(value)
            return out
        if isinstance(obj, tuple):
            return [dump(v) for v in obj]
        if isinstance(obj, dict):
            return {k: dump(v) for k, v in obj.items()}
        if isinstance(obj, str) and "://" in obj and ("@" in obj or "password=" in obj):
            return masked_url(obj)  # a password inside a URL (store.redis_url)
        return obj

    result: dict[str, Any] = dump(config)
    return result
