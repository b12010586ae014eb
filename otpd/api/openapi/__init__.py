"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /v1/openapi.json`` and kept as
``docs/openapi.json`` (regenerate with ``python -m otpd.api.openapi > docs/openapi.json``).

Request bodies come from the dataclasses that validate them (in :mod:`otpd.api.schemas` and
:mod:`otpd.api.totp`): types, required fields, lengths, no unknown fields. Everything else is
the table :data:`OPERATIONS`: one entry per route with its answers, error codes, examples
and links."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aiohttp import web

from otpd.api.hosted import HOSTED_VERIFY_PATH
from otpd.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from otpd.api.schemas import (
    MAX_STR,
    IssueOtpBody,
    LinkRequestBody,
    RemindersBody,
    SendMessageBody,
    TokenBody,
    VerifyOtpBody,
)
from otpd.api.suppressions import SuppressionBody
from otpd.api.totp import (
    TotpCodeBody,
    TotpConfirmBody,
    TotpDeleteBody,
    TotpEnrollBody,
    TotpUserBody,
)
from otpd.errors import (
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InvalidTokenError,
    NotFoundError,
    OtpdError,
    RateLimitedError,
    RecipientSuppressedError,
    SmsBlockedError,
    TotpAlreadyEnabledError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
)
from otpd.models import Channel, OtpChannel, TaskStatus, VerifyReason
from otpd.services.audit import AUDIT_EVENTS
from otpd.services.tasks import MAX_DEAD_LETTERS
from otpd.store.base import AUDIT_MAX_LIMIT
from otpd.webhooks.events import WebhookRefusedError

__all__ = [
    "OPENAPI_PATH",
    "OPERATIONS",
    "REGENERATE",
    "Answer",
    "Operation",
    "body_schema",
    "document",
    "openapi_routes",
    "render",
]

OPENAPI_PATH = "/v1/openapi.json"
REGENERATE = "python -m otpd.api.openapi > docs/openapi.json"

JSON = "application/json"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(values: type[Any]) -> list[str]:
    return [member.value for member in values]


# Documented beyond the parser's type and length checks: the services refuse (422) any
# other value of these fields.
FIELD_HINTS: dict[tuple[type[Any], str], dict[str, Any]] = {
    (IssueOtpBody, "channel"): {"enum": _enum(OtpChannel)},
    (IssueOtpBody, "fallback"): {
        "enum": [*_enum(Channel), None],
        "description": "the other channel: the code goes there if the first one fails",
    },
    (SendMessageBody, "channel"): {"enum": _enum(Channel)},
}


def _field_schema(tp: Any, meta: Mapping[str, Any], nested: dict[str, type[Any]]) -> dict[str, Any]:
    """The JSON Schema of a field annotated ``tp``, as :mod:`otpd.api.schemas` checks it."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        inner = _field_schema(next(a for a in args if a is not type(None)), meta, nested)
        if type(None) in args:
            inner["type"] = [inner["type"], "null"]
        return inner
    if tp is str:
        return {"type": "string", "maxLength": meta.get("max_len", MAX_STR)}
    if tp is int:
        return {"type": "integer"}
    if tp is bool:
        return {"type": "boolean"}
    if typing.get_origin(tp) is dict or tp is dict:
        return {"type": "object"}
    if typing.get_origin(tp) is list:
        schema: dict[str, Any] = {"type": "array", "items": _field_schema(args[0], {}, nested)}
        if "max_items" in meta:
            schema["maxItems"] = meta["max_items"]
        return schema
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        nested[tp.__name__] = tp
        return _ref(tp.__name__)
    raise TypeError(f"no JSON Schema for {tp!r}")  # pragma: no cover


def body_schema(cls: type[Any], nested: dict[str, type[Any]]) -> dict[str, Any]:
    """The JSON Schema of request body ``cls`` (nested schemas are added to ``nested``)."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        schema = _field_schema(hints[f.name], f.metadata, nested)
        schema.update(FIELD_HINTS.get((cls, f.name), {}))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        elif f.default is not None:
            schema["default"] = f.default
        properties[f.name] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def _object(required: tuple[str, ...] | None = None, **properties: Any) -> dict[str, Any]:
    """A closed object schema; every property is required unless ``required`` says."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else list(required),
        "additionalProperties": False,
    }


STRING = {"type": "string"}
NULLABLE = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}
INT = {"type": "integer", "minimum": 0}

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        **_object(
            error=_object(
                code={"type": "string", "description": "stable, for programs"},
                message={"type": "string", "description": "for people"},
                details={"type": "object", "description": "e.g. fields: {name: problem}"},
            )
        ),
        "description": "The one shape of every error answer.",
    },
    "OtpIssued": _object(
        otp_id=STRING,
        expires_at=TIME,
        deliveries={
            "type": "array",
            "items": _object(channel={"enum": _enum(Channel)}, task_id=STRING),
        },
    ),
    "OtpStatus": _object(
        otp_id=STRING,
        status={"enum": ["pending", "verified", "expired"]},
        expires_at=TIME,
        deliveries={
            "type": "array",
            "items": _object(
                channel={"enum": _enum(Channel)},
                task_id=STRING,
                status={
                    "enum": [*_enum(TaskStatus), "unknown"],
                    "description": "the task's status (unknown: its record expired)",
                },
                fallback={"type": "boolean", "description": "sent after the first failed"},
            ),
        },
    ),
    "VerifyResult": _object(
        ("verified",),
        verified={"type": "boolean"},
        reason={"enum": _enum(VerifyReason)},
        attempts_left=INT,
    ),
    "TaskAccepted": _object(task_id=STRING),
    "Suppression": _object(
        ("suppressed",),
        suppressed={"type": "boolean"},
        reason=NULLABLE,
        since={"type": ["string", "null"], "format": "date-time"},
    ),
    "SmsBlocks": _object(
        blocks={
            "type": "array",
            "items": _object(
                prefix={
                    "type": ["string", "null"],
                    "description": "+ and sms.prefix_digits digits (null: its key is gone)",
                },
                reason={"enum": ["low_conversion"]},
                blocked_at=TIME,
                expires_at=TIME,
                sent=INT,
                verified=INT,
            ),
        }
    ),
    "Task": _object(
        task_id=STRING,
        status={"enum": _enum(TaskStatus)},
        channel={"enum": _enum(Channel)},
        attempts=INT,
        provider=NULLABLE,
        last_error=NULLABLE,
        provider_message_id=NULLABLE,
        delivered_at={"type": ["string", "null"], "format": "date-time"},
        reason=NULLABLE,
        created_at=TIME,
        updated_at=TIME,
    ),
    "DeadLetters": _object(
        dead_letters={
            "type": "array",
            "items": _object(
                task_id=STRING,
                channel={"enum": _enum(Channel)},
                recipient={"type": "string", "description": "masked"},
                last_error=STRING,
                attempts=INT,
                failed_at=TIME,
            ),
        }
    ),
    "MessagingHealth": _object(
        providers={
            "type": "array",
            "items": _object(
                name=STRING,
                channel={"enum": _enum(Channel)},
                state={"type": "string", "description": "the circuit breaker's state"},
                consecutive_failures=INT,
                last_error=NULLABLE,
                last_success_at={"type": ["string", "null"], "format": "date-time"},
                details={"type": "object"},
            ),
        }
    ),
    "Health": _object(status={"const": "ok"}),
    "Readiness": _object(
        ("status", "checks"),
        status={"enum": ["ready", "not_ready"]},
        checks={
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
            },
        },
        degraded={"type": "boolean", "description": "with store.fallback: serving from it"},
        reason=STRING,
    ),
    "AuditPage": _object(
        events={
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"id": STRING, "event": {"enum": sorted(AUDIT_EVENTS)}, "at": TIME},
                "required": ["event", "at"],
                "additionalProperties": STRING,
            },
        },
        next_cursor=NULLABLE,
    ),
    "TotpEnrollment": _object(
        secret={"type": "string", "description": "base32, for typing into an app"},
        otpauth_uri=STRING,
        qr_svg={"type": "string", "description": "the otpauth URI as an SVG QR code"},
        expires_at=TIME,
    ),
    "TotpConfirmed": _object(
        ("enabled",),
        enabled={"type": "boolean"},
        recovery_codes={"type": "array", "items": STRING, "description": "shown once"},
        reason=STRING,
    ),
    "CodeVerified": _object(
        ("verified",),
        verified={"type": "boolean"},
        reason=STRING,
        remaining={**INT, "description": "recovery codes left"},
    ),
    "RecoveryCodes": _object(recovery_codes={"type": "array", "items": STRING}),
    "LinkIssued": _object(task_id=STRING, expires_at=TIME),
    "LinkOwner": _object(user_id=STRING, email=STRING),
    "ResetCheck": _object(user_id=STRING, email=STRING, expires_at=TIME),
    "RemindersQueued": _object(
        queued=INT, skipped={"type": "array", "items": _object(user_id=STRING, reason=STRING)}
    ),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One documented success (or page) answer of an operation."""

    description: str
    schema: dict[str, Any] | None = None  # JSON unless media_type says otherwise
    example: Any = None
    media_type: str = JSON
    headers: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    links: Mapping[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: what it takes, what it answers, and which errors it can give."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    answers: Mapping[int, Answer]
    errors: tuple[type[OtpdError] | tuple[int, str], ...] = ()
    body: type[Any] | None = None
    body_example: Mapping[str, Any] | None = None
    body_required: bool = True
    form: dict[str, Any] | None = None  # an application/x-www-form-urlencoded body
    parameters: tuple[dict[str, Any], ...] = ()
    public: bool = False

    @property
    def error_codes(self) -> dict[int, list[str]]:
        """The documented error codes by status (401 for every route behind the key, 503
        for every route: a connection over ``server.max_connections`` gets it)."""
        codes: dict[int, list[str]] = {}
        pairs = [e if isinstance(e, tuple) else (e.status, e.code) for e in self.errors]
        if not self.public:
            pairs.append((UnauthorizedError.status, UnauthorizedError.code))
        if self.body is not None:
            pairs += [(ValidationError.status, ValidationError.code), (408, "request_timeout")]
        pairs.append((UnavailableError.status, UnavailableError.code))
        for status, code in pairs:
            if code not in codes.setdefault(status, []):
                codes[status].append(code)
        return dict(sorted(codes.items()))


RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds until a retry may pass (also `details.retry_after`)",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "example": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9",
}
OTP_ID = {
    "name": "otp_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "example": "otp_01HZX3V8Q6G7T2M4N5P6R7S8T9",
}
TASK_LINK = {"operationId": "getTask", "parameters": {"task_id": "$response.body#/task_id"}}
AUDIT_LINK = {
    "operationId": "listAuditEvents",
    "parameters": {"user_id": "$request.body#/user_id"},
    "description": "what the trail recorded for this user",
}
ISSUED = {"task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9", "expires_at": "2026-12-02T06:00:00Z"}
OWNER = {"user_id": "42", "email": "ada@example.com"}
TOKEN = {"token": "Hx3k9QpV2mT7yR4sW8zB1nC6dF5gJ0aL-eU_iO3pK7q"}
LINK_REQUEST = {"user_id": "42", "email": "ada@example.com", "name": "Ada"}

SUPPRESSED_ADDRESS = {
    "name": "address",
    "in": "query",
    "required": True,
    "schema": STRING,
    "example": "ada@example.com",
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/v1/otp",
        "issueOtp",
        "Issue a one-time code by email, SMS or both (replaces the user's previous code)",
        "otp",
        {
            202: Answer(
                "accepted: one delivery task per channel",
                _ref("OtpIssued"),
                {
                    "otp_id": "otp_01HZX3V8Q6G7T2M4N5P6R7S8T9",
                    "expires_at": "2026-12-02T06:00:00Z",
                    "deliveries": [
                        {"channel": "email", "task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9"}
                    ],
                },
                links={
                    "verifyOtp": {
                        "operationId": "verifyOtp",
                        "description": "the code itself only travels by email or SMS",
                        "requestBody": {
                            "user_id": "$request.body#/user_id",
                            "purpose": "$request.body#/purpose",
                        },
                    },
                    "getDelivery": {
                        "operationId": "getTask",
                        "parameters": {"task_id": "$response.body#/deliveries/0/task_id"},
                    },
                    "getOtp": {
                        "operationId": "getOtp",
                        "description": "for a code issued with a fallback",
                        "parameters": {"otp_id": "$response.body#/otp_id"},
                    },
                    "audit": AUDIT_LINK,
                },
            )
        },
        (RateLimitedError, SmsBlockedError, RecipientSuppressedError),
        IssueOtpBody,
        {"user_id": "42", "channel": "email", "email": "ada@example.com"},
    ),
    Operation(
        "GET",
        "/v1/otp/{otp_id}",
        "getOtp",
        "Where a code issued with a fallback went, and whether it was verified",
        "otp",
        {
            200: Answer(
                "the code's deliveries: the first channel's, then the fallback's if sent",
                _ref("OtpStatus"),
                {
                    "otp_id": "otp_01HZX3V8Q6G7T2M4N5P6R7S8T9",
                    "status": "verified",
                    "expires_at": "2026-12-02T06:00:00Z",
                    "deliveries": [
                        {
                            "channel": "sms",
                            "task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9",
                            "status": "failed",
                            "fallback": False,
                        },
                        {
                            "channel": "email",
                            "task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8TA",
                            "status": "delivered",
                            "fallback": True,
                        },
                    ],
                },
                links={
                    "getDelivery": {
                        "operationId": "getTask",
                        "parameters": {"task_id": "$response.body#/deliveries/0/task_id"},
                    }
                },
            )
        },
        (NotFoundError,),
        parameters=(OTP_ID,),
    ),
    Operation(
        "POST",
        "/v1/otp/verify",
        "verifyOtp",
        "Verify a code (single use; a dead code stays dead)",
        "otp",
        {200: Answer("the outcome", _ref("VerifyResult"), {"verified": True})},
        body=VerifyOtpBody,
        body_example={"user_id": "42", "code": "493027"},
    ),
    Operation(
        "POST",
        "/v1/messages",
        "sendMessage",
        "Send one email or SMS from a template or literal text, at most once per idempotency key",
        "messages",
        {
            202: Answer(
                "accepted",
                _ref("TaskAccepted"),
                {"task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9"},
                headers={
                    "Idempotent-Replayed": {
                        "description": "the answer of the first request under this key",
                        "schema": {"const": "true"},
                    }
                },
                links={"getTask": TASK_LINK},
            )
        },
        (IdempotencyKeyReusedError, IdempotencyKeyInUseError, RateLimitedError, SmsBlockedError),
        SendMessageBody,
        {
            "channel": "email",
            "to": "ada@example.com",
            "template": "password_changed",
            "context": {"name": "Ada"},
        },
    ),
    Operation(
        "GET",
        "/v1/tasks/{task_id}",
        "getTask",
        "A delivery task's status",
        "tasks",
        {
            200: Answer(
                "the task",
                _ref("Task"),
                {
                    "task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9",
                    "status": "delivered",
                    "channel": "email",
                    "attempts": 1,
                    "provider": "ses",
                    "last_error": None,
                    "provider_message_id": "0100018c-1b2a-4c3d-9e8f-0123456789ab-000000",
                    "delivered_at": "2026-12-02T05:50:03Z",
                    "reason": None,
                    "created_at": "2026-12-02T05:50:00Z",
                    "updated_at": "2026-12-02T05:50:01Z",
                },
            )
        },
        (NotFoundError,),
        parameters=(TASK_ID,),
    ),
    Operation(
        "GET",
        "/v1/dead-letters",
        "listDeadLetters",
        "Tasks that failed for good, newest first",
        "tasks",
        {
            200: Answer(
                "the dead letters",
                _ref("DeadLetters"),
                {
                    "dead_letters": [
                        {
                            "task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9",
                            "channel": "sms",
                            "recipient": "+4479******23",
                            "last_error": "invalid_recipient",
                            "attempts": 1,
                            "failed_at": "2026-12-02T05:50:01Z",
                        }
                    ]
                },
                links={
                    "replay": {
                        "operationId": "replayDeadLetter",
                        "parameters": {"task_id": "$response.body#/dead_letters/0/task_id"},
                    }
                },
            )
        },
        (ValidationError,),
        parameters=(
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DEAD_LETTERS},
                "example": 100,
            },
            {"name": "channel", "in": "query", "schema": {"enum": _enum(Channel)}},
        ),
    ),
    Operation(
        "POST",
        "/v1/dead-letters/{task_id}/replay",
        "replayDeadLetter",
        "Queue a dead letter again under its task id (attempts reset)",
        "tasks",
        {
            202: Answer(
                "queued again",
                _ref("TaskAccepted"),
                {"task_id": "tsk_01HZX3V8Q6G7T2M4N5P6R7S8T9"},
                links={"getTask": TASK_LINK},
            )
        },
        (NotFoundError,),
        parameters=(TASK_ID,),
    ),
    Operation(
        "GET",
        "/v1/health/messaging",
        "messagingHealth",
        "Every email and SMS provider in chain order with its circuit breaker",
        "health",
        {
            200: Answer(
                "the providers",
                _ref("MessagingHealth"),
                {
                    "providers": [
                        {
                            "name": "smtp",
                            "channel": "email",
                            "state": "closed",
                            "consecutive_failures": 0,
                            "last_error": None,
                            "last_success_at": "2026-12-02T05:50:01Z",
                            "details": {},
                        }
                    ]
                },
            )
        },
    ),
    Operation(
        "POST",
        "/v1/email-verifications",
        "requestEmailVerification",
        "Mail an email verification link (a new one supersedes the previous)",
        "links",
        {
            202: Answer(
                "accepted",
                _ref("LinkIssued"),
                ISSUED,
                links={
                    "getTask": TASK_LINK,
                    "confirm": {
                        "operationId": "confirmEmailVerification",
                        "description": "the token itself only travels in the mail",
                    },
                    "audit": AUDIT_LINK,
                },
            )
        },
        (RateLimitedError, RecipientSuppressedError),
        LinkRequestBody,
        LINK_REQUEST,
    ),
    Operation(
        "POST",
        "/v1/email-verifications/confirm",
        "confirmEmailVerification",
        "Consume an email verification token",
        "links",
        {200: Answer("confirmed", _ref("LinkOwner"), OWNER)},
        (InvalidTokenError,),
        TokenBody,
        TOKEN,
    ),
    Operation(
        "POST",
        "/v1/email-verifications/reminders",
        "sendVerificationReminders",
        "Mail verification reminders to many users at once",
        "links",
        {202: Answer("queued", _ref("RemindersQueued"), {"queued": 1, "skipped": []})},
        body=RemindersBody,
        body_example={"users": [{"user_id": "7", "email": "bo@example.com"}]},
    ),
    Operation(
        "POST",
        "/v1/password-resets",
        "requestPasswordReset",
        "Mail a password reset link (202 also when a limit silently dropped the send)",
        "links",
        {
            202: Answer(
                "accepted",
                _ref("LinkIssued"),
                ISSUED,
                links={
                    "getTask": TASK_LINK,
                    "check": {
                        "operationId": "checkPasswordReset",
                        "description": "the token itself only travels in the mail",
                    },
                },
            )
        },
        body=LinkRequestBody,
        body_example={**LINK_REQUEST, "client_ip": "203.0.113.9"},
    ),
    Operation(
        "POST",
        "/v1/password-resets/check",
        "checkPasswordReset",
        "Check a password reset token without consuming it",
        "links",
        {
            200: Answer(
                "valid",
                _ref("ResetCheck"),
                {**OWNER, "expires_at": "2026-12-02T06:00:00Z"},
                links={"confirm": {"operationId": "confirmPasswordReset"}},
            )
        },
        (InvalidTokenError,),
        TokenBody,
        TOKEN,
    ),
    Operation(
        "POST",
        "/v1/password-resets/confirm",
        "confirmPasswordReset",
        "Consume a password reset token (then change the password)",
        "links",
        {200: Answer("consumed", _ref("LinkOwner"), OWNER)},
        (InvalidTokenError,),
        TokenBody,
        TOKEN,
    ),
    Operation(
        "POST",
        "/v1/totp/enrollments",
        "enrollTotp",
        "Start a TOTP enrolment: a secret for an authenticator app, confirmed by a first code",
        "totp",
        {
            201: Answer(
                "pending until confirmed",
                _ref("TotpEnrollment"),
                {
                    "secret": "JBSWY3DPEHPK3PXP",
                    "otpauth_uri": "otpauth://totp/otpd:ada%40example.com?secret=JBSWY3DPEHPK3PXP",
                    "qr_svg": "<svg …>",
                    "expires_at": "2026-12-02T06:00:00Z",
                },
                links={
                    "confirm": {
                        "operationId": "confirmTotp",
                        "requestBody": {"user_id": "$request.body#/user_id"},
                    },
                    "audit": AUDIT_LINK,
                },
            )
        },
        (TotpAlreadyEnabledError,),
        TotpEnrollBody,
        {"user_id": "42", "account_name": "ada@example.com"},
    ),
    Operation(
        "POST",
        "/v1/totp/enrollments/confirm",
        "confirmTotp",
        "Confirm an enrolment with a first code: TOTP is on, recovery codes shown once",
        "totp",
        {
            200: Answer(
                "the outcome",
                _ref("TotpConfirmed"),
                {"enabled": True, "recovery_codes": ["a1b2-c3d4"]},
                links={
                    "verify": {
                        "operationId": "verifyTotp",
                        "requestBody": {"user_id": "$request.body#/user_id"},
                    },
                    "audit": AUDIT_LINK,
                },
            )
        },
        (NotFoundError, RateLimitedError),
        TotpConfirmBody,
        {"user_id": "42", "code": "493027"},
    ),
    Operation(
        "POST",
        "/v1/totp/verify",
        "verifyTotp",
        "Verify a TOTP code",
        "totp",
        {200: Answer("the outcome", _ref("CodeVerified"), {"verified": True})},
        (RateLimitedError,),
        TotpCodeBody,
        {"user_id": "42", "code": "493027"},
    ),
    Operation(
        "POST",
        "/v1/recovery-codes/verify",
        "verifyRecoveryCode",
        "Use up one recovery code",
        "totp",
        {200: Answer("the outcome", _ref("CodeVerified"), {"verified": True, "remaining": 9})},
        (RateLimitedError,),
        TotpCodeBody,
        {"user_id": "42", "code": "a1b2-c3d4"},
    ),
    Operation(
        "POST",
        "/v1/recovery-codes/regenerate",
        "regenerateRecoveryCodes",
        "A new set of recovery codes (the old ones stop working)",
        "totp",
        {200: Answer("shown once", _ref("RecoveryCodes"), {"recovery_codes": ["a1b2-c3d4"]})},
        (NotFoundError,),
        TotpUserBody,
        {"user_id": "42"},
    ),
    Operation(
        "DELETE",
        "/v1/totp/{user_id}",
        "deleteTotp",
        "Turn TOTP off for a user (a notice goes to email when given)",
        "totp",
        {204: Answer("off")},
        (NotFoundError,),
        TotpDeleteBody,
        {"email": "ada@example.com"},
        body_required=False,
        parameters=(
            {"name": "user_id", "in": "path", "required": True, "schema": STRING, "example": "42"},
        ),
    ),
    Operation(
        "GET",
        "/v1/suppressions",
        "getSuppression",
        "Whether an email address or E.164 number is on the suppression list",
        "suppressions",
        {
            200: Answer(
                "the entry (suppressed false when there is none)",
                _ref("Suppression"),
                {"suppressed": True, "reason": "bounce", "since": "2026-12-02T05:50:00Z"},
            )
        },
        (ValidationError,),
        parameters=(SUPPRESSED_ADDRESS,),
    ),
    Operation(
        "POST",
        "/v1/suppressions",
        "addSuppression",
        "Suppress a recipient: no OTP, link or message goes to it until it is lifted",
        "suppressions",
        {
            201: Answer(
                "suppressed",
                _ref("Suppression"),
                {"suppressed": True, "reason": "manual", "since": "2026-12-02T05:50:00Z"},
            )
        },
        (ValidationError,),
        SuppressionBody,
        {"address": "ada@example.com", "reason": "manual"},
    ),
    Operation(
        "DELETE",
        "/v1/suppressions",
        "deleteSuppression",
        "Lift the suppression of a recipient (204 whether or not it was suppressed)",
        "suppressions",
        {204: Answer("not suppressed")},
        (ValidationError,),
        parameters=(SUPPRESSED_ADDRESS,),
    ),
    Operation(
        "GET",
        "/v1/sms/blocks",
        "listSmsBlocks",
        "The number ranges blocked for low conversion, the soonest to expire first",
        "sms",
        {
            200: Answer(
                "every live block",
                _ref("SmsBlocks"),
                {
                    "blocks": [
                        {
                            "prefix": "+33612345",
                            "reason": "low_conversion",
                            "blocked_at": "2026-12-02T05:50:00Z",
                            "expires_at": "2026-12-02T17:50:00Z",
                            "sent": 20,
                            "verified": 1,
                        }
                    ]
                },
            )
        },
        (ValidationError,),
    ),
    Operation(
        "DELETE",
        "/v1/sms/blocks/{prefix}",
        "liftSmsBlock",
        "Lift the block of a number range and forget its samples",
        "sms",
        {204: Answer("lifted")},
        (ValidationError, NotFoundError),
        parameters=(
            {
                "name": "prefix",
                "in": "path",
                "required": True,
                "schema": STRING,
                "example": "+33612345",
                "description": "+ and exactly sms.prefix_digits digits",
            },
        ),
    ),
    Operation(
        "GET",
        "/v1/audit",
        "listAuditEvents",
        "The audit trail, newest first (without user_id: the events that name no user)",
        "audit",
        {
            200: Answer(
                "one page of events",
                _ref("AuditPage"),
                {
                    "events": [
                        {
                            "id": "1764654600000-0",
                            "event": "otp_verified",
                            "at": "2026-12-02T05:50:00Z",
                            "user_id": "42",
                        }
                    ],
                    "next_cursor": None,
                },
                links={
                    "nextPage": {
                        "operationId": "listAuditEvents",
                        "parameters": {
                            "user_id": "$request.query.user_id",
                            "cursor": "$response.body#/next_cursor",
                        },
                    }
                },
            )
        },
        (ValidationError,),
        parameters=(
            {"name": "user_id", "in": "query", "schema": STRING, "example": "42"},
            {"name": "event", "in": "query", "schema": {"enum": sorted(AUDIT_EVENTS)}},
            {"name": "since", "in": "query", "schema": TIME},
            {"name": "until", "in": "query", "schema": TIME},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": AUDIT_MAX_LIMIT},
            },
            {"name": "cursor", "in": "query", "schema": STRING},
        ),
    ),
    Operation(
        "GET",
        OPENAPI_PATH,
        "openapi",
        "This document",
        "meta",
        {200: Answer("the OpenAPI 3.1 document", {"type": "object"})},
    ),
    Operation(
        "GET",
        HOSTED_VERIFY_PATH,
        "hostedVerifyPage",
        "The page a mailed link opens (links.hosted): a Confirm form; opening it consumes nothing",
        "hosted",
        {
            200: Answer("the Confirm page", STRING, media_type=HTML),
            400: Answer("the broken-link page (no form)", STRING, media_type=HTML),
        },
        (NotFoundError,),
        parameters=({"name": "token", "in": "query", "schema": STRING},),
        public=True,
    ),
    Operation(
        "POST",
        HOSTED_VERIFY_PATH,
        "hostedVerifyConfirm",
        "The page's Confirm button: consumes the token, then on to success_url or failure_url",
        "hosted",
        {
            303: Answer(
                "to links.success_url, or links.failure_url for a bad token",
                headers={"Location": {"required": True, "schema": STRING}},
            ),
            400: Answer("not the page's form: the broken-link page", STRING, media_type=HTML),
        },
        (NotFoundError,),
        form={"type": "object", "properties": {"token": STRING}},
        public=True,
    ),
    Operation(
        "GET",
        "/healthz",
        "healthz",
        "Liveness: 200 while the event loop runs",
        "health",
        {200: Answer("alive", _ref("Health"), {"status": "ok"})},
        public=True,
    ),
    Operation(
        "GET",
        "/readyz",
        "readyz",
        "Readiness: the store answers and the dispatcher runs",
        "health",
        {
            200: Answer(
                "ready",
                _ref("Readiness"),
                {
                    "status": "ready",
                    "checks": {
                        "store": {"ok": True, "backend": "redis"},
                        "dispatcher": {"ok": True, "queue_depth": 0},
                    },
                },
            ),
            503: Answer("not ready: names the failing check", _ref("Readiness")),
        },
        public=True,
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics (behind metrics.token when set; 404 with metrics.port)",
        "health",
        {200: Answer("the Prometheus text format", STRING, media_type=METRICS_CONTENT_TYPE)},
        (UnauthorizedError, NotFoundError),
        public=True,
    ),
    Operation(
        "POST",
        "/webhooks/twilio",
        "twilio_webhook",
        "Twilio SMS status callback (X-Twilio-Signature over twilio.status_callback)",
        "webhooks",
        {200: Answer("verified and applied", _object(accepted=INT), {"accepted": 1})},
        (WebhookRefusedError, (ValidationError.status, ValidationError.code)),
        form={"type": "object", "additionalProperties": STRING},
        public=True,
    ),
    Operation(
        "POST",
        "/webhooks/mailgun",
        "mailgun_webhook",
        "Mailgun webhook (HMAC of timestamp and token; a token is accepted once)",
        "webhooks",
        {200: Answer("verified and applied", _object(accepted=INT), {"accepted": 1})},
        (WebhookRefusedError, (ValidationError.status, ValidationError.code)),
        public=True,
    ),
    Operation(
        "POST",
        "/webhooks/sendgrid",
        "sendgrid_webhook",
        "SendGrid Event Webhook (ECDSA P-256 signature over timestamp and body)",
        "webhooks",
        {200: Answer("verified and applied", _object(accepted=INT), {"accepted": 1})},
        (WebhookRefusedError, (ValidationError.status, ValidationError.code)),
        public=True,
    ),
    Operation(
        "POST",
        "/webhooks/vonage",
        "vonage_webhook",
        "Vonage SMS API delivery receipt, form or JSON (signed sig; a signature is accepted once)",
        "webhooks",
        {200: Answer("verified and applied", _object(accepted=INT), {"accepted": 1})},
        (WebhookRefusedError, (ValidationError.status, ValidationError.code)),
        form={"type": "object", "additionalProperties": STRING},
        public=True,
    ),
    Operation(
        "POST",
        "/webhooks/ses",
        "ses_webhook",
        "SES events over an SNS HTTPS subscription (SNS signature v1/v2, listed topics only; "
        "a SubscriptionConfirmation is confirmed)",
        "webhooks",
        {200: Answer("verified and applied", _object(accepted=INT), {"accepted": 1})},
        (WebhookRefusedError, (ValidationError.status, ValidationError.code)),
        public=True,
    ),
)


def _content(media_type: str, schema: dict[str, Any] | None, example: Any) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema if schema is not None else {}}
    if example is not None:
        media["example"] = example
    return {media_type: media}


def _error_schema(codes: list[str]) -> dict[str, Any]:
    return {
        "allOf": [
            _ref("Error"),
            {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
        ]
    }


def _responses(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    errors = op.error_codes
    for status in sorted({*op.answers, *errors}):
        answer = op.answers.get(status)
        codes = errors.get(status, [])
        if answer is None:
            shown = {"error": {"code": codes[0], "message": "…", "details": {}}}
            out[str(status)] = {
                "description": "error: " + ", ".join(codes),
                "content": _content(JSON, _error_schema(codes), shown),
            }
            if status == RateLimitedError.status:
                out[str(status)]["headers"] = RETRY_AFTER
            continue
        response: dict[str, Any] = {"description": answer.description}
        if answer.schema is not None:
            schema = answer.schema
            content = _content(answer.media_type, schema, answer.example)
            if codes:  # the same status as an error (a 503 readiness answer and the error)
                content = _content(JSON, {"oneOf": [schema, _error_schema(codes)]}, answer.example)
            response["content"] = content
        if answer.headers:
            response["headers"] = dict(answer.headers)
        if answer.links:
            response["links"] = dict(answer.links)
        out[str(status)] = response
    return out


def _operation(op: Operation, nested: dict[str, type[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.public:
        out["security"] = []
    if op.parameters:
        out["parameters"] = [dict(p) for p in op.parameters]
    if op.body is not None:
        nested[op.body.__name__] = op.body
        out["requestBody"] = {
            "required": op.body_required,
            "content": _content(JSON, _ref(op.body.__name__), op.body_example),
        }
    elif op.form is not None:
        out["requestBody"] = {"content": _content(FORM, op.form, None)}
    out["responses"] = _responses(op)
    return out


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route otpd serves."""
    nested: dict[str, type[Any]] = {}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, nested)
    bodies: dict[str, Any] = {}
    while len(bodies) < len(nested):  # nested schemas can bring more nested schemas
        for name, cls in list(nested.items()):
            bodies.setdefault(name, body_schema(cls, nested))
    schemas = {name: bodies[name] for name in sorted(bodies)}
    schemas.update(RESPONSE_SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "otpd",
            "version": "1",
            "description": (
                "One-time codes, verification and reset links, and transactional messages. "
                "Every error has the shape {error: {code, message, details}}. Malformed HTTP "
                "gets the same shape (400 bad_request, 414 uri_too_long, 431 "
                "headers_too_large); a known path with another method 405 "
                "method_not_allowed with an Allow header."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key whose SHA-256 digest is listed in auth.keys",
                }
            },
        },
        "security": [{"bearer": []}],
    }


@cache
def render() -> str:
    """The document as kept in ``docs/openapi.json``."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


openapi_routes = web.RouteTableDef()


@openapi_routes.get(OPENAPI_PATH)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=render(), content_type=JSON)
