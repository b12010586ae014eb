"""Mailgun JSON webhooks: HMAC over timestamp and token, tokens claimed once, events mapped."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

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

__all__ = ["MailgunWebhook", "mailgun_signature"]

"""Seconds a timestamp may be off the clock, either way; tokens are kept this long twice."""
_SCOPE = "webhook:mailgun"


def mailgun_signature(signing_key: str, timestamp: str, token: str) -> str:
    """hex(HMAC-SHA256(signing_key, timestamp + token)), as Mailgun signs its webhooks."""
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


class MailgunWebhook:
    """Verifies a webhook's signature and freshness and refuses a token seen before."""

    def __init__(self, *, signing_key: str, store: Store, clock: Clock) -> None:
        self._key = signing_key
        self._store = store
        self._clock = clock

    async def events(self, headers: Mapping[str, str], raw_body: bytes) -> list[DeliveryEvent]:
        """The body's events (Mailgun signs in the body: ``headers`` are not read)."""
        if not self._key:
            raise WebhookRefusedError("mailgun webhooks are not configured")
        body = _json(raw_body)
        sig = body.get("signature") if isinstance(body, dict) else None
        if not isinstance(sig, dict):
            raise WebhookRefusedError("signature is missing")
        timestamp, token, given = (sig.get(k) for k in ("timestamp", "token", "signature"))
        if not (isinstance(timestamp, str) and isinstance(token, str) and isinstance(given, str)):
            raise WebhookRefusedError("signature is missing")
        expected = mailgun_signature(self._key, timestamp, token)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise WebhookRefusedError("signature is wrong")
        check_fresh(timestamp, self._clock.time())
        ref = hmac.new(self._key.encode(), token.encode(), hashlib.sha256).hexdigest()
        claim = await self._store.claim(_SCOPE, ref, ref, 2 * REPLAY_WINDOW)
        if claim.state is not ClaimState.CLAIMED:
            raise WebhookRefusedError("signature was used already")
        return _events(body.get("event-data"), float(timestamp))


def _json(raw_body: bytes) -> Any:
    try:
        return json.loads(raw_body)
    except (ValueError, RecursionError):
        return None


def _time(value: Any, default: float) -> float:
    try:
        return float(value) if isinstance(value, int | float) else default
    except OverflowError:
        return default


def _events(data: Any, signed_at: float) -> list[DeliveryEvent]:
    if not isinstance(data, dict):
        raise ValidationError.field("event-data", "must be an object")
    event, event_id = data.get("event"), data.get("id")
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    raw_id = headers.get("message-id") if isinstance(headers, dict) else None
    if not (isinstance(event, str) and isinstance(event_id, str) and isinstance(raw_id, str)):
        raise ValidationError.field("event-data", "event, id and message.headers are required")
    permanent, reason = False, ""
    if event == "delivered":
        outcome = DeliveryOutcome.DELIVERED
    elif event == "complained":
        outcome, permanent = DeliveryOutcome.COMPLAINED, True
    elif event == "failed" and data.get("severity") == "permanent":
        outcome, permanent = DeliveryOutcome.BOUNCED, True
        reason = str(data.get("reason", ""))[:64]
    else:
        return []  # temporary failures are retried by Mailgun; opens, clicks: not ours
    occurred = data.get("timestamp")
    recipient = data.get("recipient")
    return [
        DeliveryEvent(
            provider="mailgun",
            # the send API returned "<id@domain>"; events carry it without the brackets
            message_id=f"<{raw_id.strip('<>')}>",
            event_id=event_id,
            outcome=outcome,
            occurred_at=_time(occurred, signed_at),
            reason=reason,
            permanent=permanent,
            recipient=recipient if isinstance(recipient, str) else "",
        )
    ]
