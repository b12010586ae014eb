"""Request bodies as dataclasses, with one strict parser: types, required fields, no
unknown fields. Semantic checks (email, phone, ids) belong to the services."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from otpd import validation as v
from otpd.errors import ValidationError
from otpd.services.links import MAX_REMINDERS

__all__ = [
    "IssueOtpBody",
    "LinkRequestBody",
    "RemindersBody",
    "SendMessageBody",
    "TokenBody",
    "VerifyOtpBody",
    "as_kwargs",
    "nesting_exceeds",
    "parse_body",
]

T = TypeVar("T")

MAX_STR = 2048
# Arrays and objects nested deeper than this are refused before the body is parsed, so no
# recursive walk (the JSON decoder, these checks, the encoder, a log renderer) meets them.
MAX_DEPTH = 32
# Unknown fields named in one error answer (the rest of a large body is not echoed back).
MAX_REPORTED_UNKNOWN = 20
MAX_REPORTED_NAME = 64

# A JSON string; possessive, so an unterminated one ends the scan in linear time.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_exceeds(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects deeper than ``limit``.

    Linear and in C: strings are cut out and all but brackets dropped; then each pass
    removes the innermost level (``[]``). A run of openers longer than the depth still
    allowed, or a pair left after ``limit`` passes, is too deep. Well-formedness is the
    parser's job: unbalanced text may count as deep, and is refused either way."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    for removed_levels in range(limit):
        if b"[" * (limit + 1 - removed_levels) in brackets:
            return True
        size = len(brackets)
        brackets = brackets.replace(b"[]", b"")
        if len(brackets) == size:
            return False
    return b"[]" in brackets


def _max(n: int) -> Any:
    return {"max_len": n}


Checker = Callable[[Any], str | None]
"""Checks one field's value: a problem description, or None when it is fine."""


def _checker(tp: Any, meta: dict[str, Any]) -> Checker:
    """The check of a field annotated ``tp``, resolved once per schema (reflection on
    every request cost more than the whole check)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = _checker(next(a for a in args if a is not type(None)), meta)
        if type(None) not in args:
            return inner
        return lambda value: None if value is None else inner(value)
    if tp is str:
        limit = meta.get("max_len", MAX_STR)
        too_long = f"at most {limit} characters"

        def string(value: Any) -> str | None:
            if not isinstance(value, str):
                return "must be a string"
            return too_long if len(value) > limit else None

        return string
    if tp is int:
        return lambda value: (
            None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
        )
    if tp is bool:
        return lambda value: None if isinstance(value, bool) else "must be true or false"
    if origin is dict or tp is dict:
        return lambda value: None if isinstance(value, dict) else "must be an object"
    if origin is list:
        item_check = _checker(args[0], {})
        max_items = meta.get("max_items")

        def array(value: Any) -> str | None:
            if not isinstance(value, list):
                return "must be an array"
            if max_items is not None and len(value) > max_items:
                return f"at most {max_items} items"
            for i, item in enumerate(value):
                problem = item_check(item)
                if problem:
                    return f"item {i}: {problem}"
            return None

        return array
    if dataclasses.is_dataclass(tp):

        def nested(value: Any) -> str | None:
            if not isinstance(value, dict):
                return "must be an object"
            try:
                _build(tp, value)  # type: ignore[arg-type]
            except ValidationError as exc:
                return "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
            return None

        return nested
    raise TypeError(f"unsupported schema type {tp!r}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    check: Checker
    required: bool
    item_schema: type[Any] | None  # list[Schema]: items are built as Schema


_PLANS: dict[type[Any], tuple[dict[str, _Field], tuple[str, ...]]] = {}


def _plan(cls: type[Any]) -> tuple[dict[str, _Field], tuple[str, ...]]:
    """The fields of a schema with their compiled checks, and the required names."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        fields: dict[str, _Field] = {}
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            args = typing.get_args(tp)
            item = args[0] if typing.get_origin(tp) is list else None
            fields[f.name] = _Field(
                f.name,
                _checker(tp, dict(f.metadata)),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                item if isinstance(item, type) and dataclasses.is_dataclass(item) else None,
            )
        plan = _PLANS[cls] = (fields, tuple(n for n, f in fields.items() if f.required))
    return plan


def _build(cls: type[T], data: dict[str, Any]) -> T:
    fields, required = _plan(cls)
    problems: dict[str, str] = {}
    if len(data) > len(fields) or any(name not in fields for name in data):
        unknown = [name for name in data if name not in fields]
        problems = {_shown(name): "unknown field" for name in unknown[:MAX_REPORTED_UNKNOWN]}
        if len(unknown) > MAX_REPORTED_UNKNOWN:
            problems["..."] = f"{len(unknown) - MAX_REPORTED_UNKNOWN} more unknown fields"
    for name in required:
        if name not in data:
            problems[name] = "required"
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields.get(name)
        if f is None:
            continue
        problem = f.check(value)
        if problem:
            problems[name] = problem
            continue
        if f.item_schema is not None:
            value = [_build(f.item_schema, item) for item in value]
        kwargs[name] = value
    if problems:
        raise ValidationError("request validation failed", fields=problems)
    return cls(**kwargs)


def as_kwargs(body: Any) -> dict[str, Any]:
    """A flat schema's fields by name, for ``service.call(**as_kwargs(body))``: unlike
    ``dataclasses.asdict`` no deep copy (flat schemas hold only strings and numbers)."""
    return {name: getattr(body, name) for name in _plan(type(body))[0]}


def _shown(name: str) -> str:
    return name if len(name) <= MAX_REPORTED_NAME else name[:MAX_REPORTED_NAME] + "..."


def parse_body(cls: type[T], raw: bytes) -> T:
    """Parse a JSON object body into ``cls`` or raise a 422 with per-field details."""
    if nesting_exceeds(raw):
        raise ValidationError(
            "malformed JSON", details={"body": f"nested deeper than {MAX_DEPTH} levels"}
        )
    try:
        # decoded here, strictly: json.loads would sniff and accept UTF-16 and UTF-32
        text = raw.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise ValidationError("malformed JSON", details={"body": "body is not UTF-8"}) from None
    except json.JSONDecodeError as exc:
        raise ValidationError("malformed JSON", details={"body": exc.msg}) from None
    except RecursionError:
        raise ValidationError("malformed JSON", details={"body": "nested too deeply"}) from None
    except ValueError as exc:  # e.g. an integer literal beyond int's digit limit
        raise ValidationError("malformed JSON", details={"body": str(exc)[:120]}) from None
    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object", details={"body": "not an object"})
    if not _encodable(data):
        raise ValidationError(
            "the body has text that is not valid Unicode",
            details={"body": "lone surrogate escapes (\\ud800-\\udfff) are not allowed"},
        )
    return _build(cls, data)


def _encodable(value: Any, depth: int = 0) -> bool:
    """Whether every string in ``value`` (keys included) encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k, depth) and _encodable(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v, depth + 1) for v in value)
    return True


@dataclass(frozen=True, slots=True)
class IssueOtpBody:
    user_id: str = field(metadata=_max(v.MAX_USER_ID))
    channel: str = field(metadata=_max(16))
    email: str | None = field(default=None, metadata=_max(v.MAX_EMAIL))
    phone: str | None = field(default=None, metadata=_max(v.MAX_PHONE))
    purpose: str = field(default="login", metadata=_max(v.MAX_PURPOSE))
    locale: str | None = field(default=None, metadata=_max(v.MAX_LOCALE))
    client_ip: str | None = field(default=None, metadata=_max(v.MAX_CLIENT_IP))
    user_agent: str | None = field(default=None, metadata=_max(v.MAX_USER_AGENT))
    fallback: str | None = field(default=None, metadata=_max(16))


@dataclass(frozen=True, slots=True)
class VerifyOtpBody:
    user_id: str = field(metadata=_max(v.MAX_USER_ID))
    code: str = field(metadata=_max(v.MAX_CODE))
    purpose: str = field(default="login", metadata=_max(v.MAX_PURPOSE))
    client_ip: str | None = field(default=None, metadata=_max(v.MAX_CLIENT_IP))
    user_agent: str | None = field(default=None, metadata=_max(v.MAX_USER_AGENT))


@dataclass(frozen=True, slots=True)
class SendMessageBody:
    channel: str = field(metadata=_max(16))
    to: str = field(metadata=_max(v.MAX_EMAIL))
    template: str | None = field(default=None, metadata=_max(v.MAX_TEMPLATE))
    context: dict[str, Any] | None = None
    locale: str | None = field(default=None, metadata=_max(v.MAX_LOCALE))
    subject: str | None = field(default=None, metadata=_max(v.MAX_SUBJECT))
    text: str | None = field(default=None, metadata=_max(v.MAX_EMAIL_TEXT))
    html: str | None = field(default=None, metadata=_max(v.MAX_EMAIL_TEXT))
    idempotency_key: str | None = field(default=None, metadata=_max(v.MAX_IDEMPOTENCY_KEY))


@dataclass(frozen=True, slots=True)
class LinkRequestBody:
    user_id: str = field(metadata=_max(v.MAX_USER_ID))
    email: str = field(metadata=_max(v.MAX_EMAIL))
    name: str | None = field(default=None, metadata=_max(v.MAX_NAME))
    locale: str | None = field(default=None, metadata=_max(v.MAX_LOCALE))
    client_ip: str | None = field(default=None, metadata=_max(v.MAX_CLIENT_IP))
    user_agent: str | None = field(default=None, metadata=_max(v.MAX_USER_AGENT))


@dataclass(frozen=True, slots=True)
class TokenBody:
    # No tight length here: anything that is not a token gets the one invalid_token answer.
    token: str


@dataclass(frozen=True, slots=True)
class ReminderUserBody:
    user_id: str = field(metadata=_max(v.MAX_USER_ID))
    email: str = field(metadata=_max(v.MAX_EMAIL))
    name: str | None = field(default=None, metadata=_max(v.MAX_NAME))


@dataclass(frozen=True, slots=True)
class RemindersBody:
    users: list[ReminderUserBody] = field(metadata={"max_items": MAX_REMINDERS})
