"""Twilio SMS status callbacks: ``X-Twilio-Signature`` checked, statuses mapped to events."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl

from otpd.clock import Clock
from otpd.errors import ValidationError
from otpd.webhooks.events import DeliveryEvent, DeliveryOutcome, WebhookRefusedError

__all__ = ["PERMANENT_ERROR_CODES", "TwilioWebhook", "twilio_signature"]

# codes after which another message to the number cannot succeed: 21610 the recipient
# replied STOP; 21614 not a mobile number; 21211 invalid number. 30003/30005/30006 etc.
# (unreachable, unknown, landline or carrier) may clear up, so they do not suppress.
PERMANENT_ERROR_CODES = frozenset({"21610", "21614", "21211"})
_FAILED = frozenset({"undelivered", "failed"})


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """base64(HMAC-SHA1(auth_token, url + each sorted param's name and value))."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class TwilioWebhook:
    """Verifies callbacks against ``status_callback``, the exact URL Twilio was given
    (not the request's URL: otpd may sit behind a proxy that rewrites it)."""

    def __init__(self, *, auth_token: str, status_callback: str, clock: Clock) -> None:
        self._auth_token = auth_token
        self._url = status_callback
        self._clock = clock

    async def events(self, headers: Mapping[str, str], raw_body: bytes) -> list[DeliveryEvent]:
        if not (self._auth_token and self._url):
            raise WebhookRefusedError("twilio webhooks are not configured")
        given = headers.get("X-Twilio-Signature", "")
        try:
            pairs = parse_qsl(raw_body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            pairs = None
        params = dict(pairs or [])
        expected = twilio_signature(self._auth_token, self._url, params)
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise WebhookRefusedError("signature is missing or wrong")
        if pairs is None:
            raise ValidationError.field("body", "must be UTF-8 form data")
        return _events(params, self._clock.time())


def _events(params: Mapping[str, str], now: float) -> list[DeliveryEvent]:
    sid = params.get("MessageSid", "")
    status = params.get("MessageStatus", "")
    if not sid or not status:
        raise ValidationError.field("MessageSid", "MessageSid and MessageStatus are required")
    code = params.get("ErrorCode", "")
    if status == "delivered":
        outcome = DeliveryOutcome.DELIVERED
    elif status in _FAILED:
        outcome = DeliveryOutcome.UNDELIVERED
    else:
        return []
    event_id = hashlib.sha256(f"{sid}\0{status}\0{code}".encode()).hexdigest()
    return [
        DeliveryEvent(
            provider="twilio",
            message_id=sid,
            event_id=event_id,
            outcome=outcome,
            occurred_at=now,  # status callbacks carry no event time
            reason=code,
            permanent=code in PERMANENT_ERROR_CODES,
            recipient=params.get("To", ""),
        )
    ]
