"""Vonage SMS API delivery receipts: the signed ``sig`` checked, each signature accepted
once, statuses mapped to events."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import parse_qsl

from otpd.clock import Clock
from otpd.errors import ValidationError
from otpd.store.base import ClaimState, Store
from otpd.webhooks.events import (
    REPLAY_WINDOW,
    DeliveryEvent,
    DeliveryOutcome,
    WebhookRefusedError,
    check_fresh,
)

__all__ = [
    "PERMANENT_ERROR_CODES",
    "SIGNATURE_METHODS",
    "SignatureMethod",
    "VonageWebhook",
    "vonage_signature",
]

SignatureMethod = Literal["md5hash", "md5", "sha1", "sha256", "sha512"]
SIGNATURE_METHODS: tuple[SignatureMethod, ...] = ("md5hash", "md5", "sha1", "sha256", "sha512")
"""The dashboard's choices: "MD5 hash" (its default) and the HMACs with MD5, SHA-1,
SHA-256 and SHA-512 (https://developer.vonage.com/getting-started/concepts/signing-messages)."""

# DLR err-code values after which no message to the number can succeed, from Vonage's
# table (https://api.support.vonage.com/hc/en-us/articles/204014733): 3 "Absent
# Subscriber - Permanent: the number is no longer active"; 4 "Call Barred by User: a
# permanent error"; 9 "Illegal Number: the user has specifically requested not to receive
# messages" (an opt-out). Everything else (1 unknown, 2 and 7 retry, 5 portability,
# 6 anti-spam, 8 network, 12 destination unreachable, ...) may clear up: no suppression.
PERMANENT_ERROR_CODES = frozenset({"3", "4", "9"})
_FAILED = frozenset({"failed", "rejected", "expired"})
_SCOPE = "webhook:vonage"
_MAX_PARAMS = 64


def vonage_signature(secret: str, method: SignatureMethod, params: Mapping[str, str]) -> str:
    """Lowercase hex signature of ``params`` (``sig`` itself left out), as Vonage signs SMS
    API requests and webhooks: every parameter in name order as ``&name=value``, with each
    ``&`` and ``=`` in a value replaced by ``_``; then md5(that + secret) for ``md5hash``,
    or HMAC-<method>(secret, that)."""
    payload = "".join(
        f"&{name}={params[name].replace('&', '_').replace('=', '_')}"
        for name in sorted(params)
        if name != "sig"
    )
    if method == "md5hash":
        # Vonage's legacy scheme (a secret suffix, not an HMAC); kept because it is the
        # dashboard's default. The HMAC methods are better and equally supported.
        return hashlib.md5((payload + secret).encode()).hexdigest()  # noqa: S324
    return hmac.new(secret.encode(), payload.encode(), method).hexdigest()


class VonageWebhook:
    """Verifies a delivery receipt's ``sig`` and signed ``timestamp`` and refuses a
    signature seen before (kept in the store for twice the replay window)."""

    def __init__(
        self, *, signature_secret: str, method: SignatureMethod, store: Store, clock: Clock
    ) -> None:
        self._secret = signature_secret
        self._method: SignatureMethod = method
        self._store = store
        self._clock = clock

    async def events(self, headers: Mapping[str, str], raw_body: bytes) -> list[DeliveryEvent]:
        if not self._secret:
            raise WebhookRefusedError("vonage webhooks are not configured")
        params = _params(headers.get("Content-Type", ""), raw_body)
        given = params.get("sig", "") if params is not None else ""
        if params is None or not given:
            raise WebhookRefusedError("signature is missing")
        expected = vonage_signature(self._secret, self._method, params)
        # SDKs differ in case (the SMS API's own example is upper case): compare lowered
        if not hmac.compare_digest(given.lower().encode(), expected.encode()):
            raise WebhookRefusedError("signature is wrong")
        check_fresh(params.get("timestamp", ""), self._clock.time())
        ref = hmac.new(self._secret.encode(), expected.encode(), hashlib.sha256).hexdigest()
        claim = await self._store.claim(_SCOPE, ref, ref, 2 * REPLAY_WINDOW)
        if claim.state is not ClaimState.CLAIMED:
            raise WebhookRefusedError("signature was used already")
        return _events(params, self._clock.time())


def _params(content_type: str, raw_body: bytes) -> dict[str, str] | None:
    """The receipt's parameters from a JSON object or a form; None when the body is
    neither (so it carries no signature that could be checked)."""
    try:
        text = raw_body.decode()
    except UnicodeDecodeError:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or len(data) > _MAX_PARAMS:
            return None
        # the receipt's fields are all strings; an integer is signed as its digits
        if not all(isinstance(v, str) or type(v) is int for v in data.values()):
            return None
        return {k: v if isinstance(v, str) else str(v) for k, v in data.items()}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_PARAMS)
    except ValueError:
        return None
    params = dict(pairs)
    # a name given twice would make what was signed ambiguous
    return params if len(params) == len(pairs) else None


def _occurred(value: str, default: float) -> float:
    """``message-timestamp`` ("YYYY-MM-DD HH:MM:SS", UTC) as UNIX seconds."""
    try:
        at = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return default
    return at.timestamp()


def _recipient(msisdn: str) -> str:
    """The handset's number in E.164 (Vonage sends it without the ``+``), or ""."""
    digits = msisdn.removeprefix("+")
    ok = digits.isascii() and digits.isdigit() and 6 <= len(digits) <= 15
    return f"+{digits}" if ok else ""


def _events(params: Mapping[str, str], now: float) -> list[DeliveryEvent]:
    message_id, status = params.get("messageId", ""), params.get("status", "")
    if not message_id or not status:
        raise ValidationError.field("messageId", "messageId and status are required")
    code = params.get("err-code", "")
    if not (code.isascii() and code.isdigit() and len(code) <= 8):
        code = ""
    if status == "delivered":
        outcome, permanent = DeliveryOutcome.DELIVERED, False
    elif status in _FAILED:
        outcome, permanent = DeliveryOutcome.UNDELIVERED, code in PERMANENT_ERROR_CODES
    else:
        return []  # accepted, buffered, unknown: not final
    event_id = hashlib.sha256(f"{message_id}\0{status}\0{code}".encode()).hexdigest()
    return [
        DeliveryEvent(
            provider="vonage",
            # SendResult.message_id is messages[0]["message-id"]: the same id as messageId
            message_id=message_id,
            event_id=event_id,
            outcome=outcome,
            occurred_at=_occurred(params.get("message-timestamp", ""), now),
            reason=code if outcome is DeliveryOutcome.UNDELIVERED else "",
            permanent=permanent,
            recipient=_recipient(params.get("msisdn", "")),
        )
    ]
