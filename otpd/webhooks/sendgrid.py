"""SendGrid Event Webhook: ECDSA P-256 signature over timestamp + body, events mapped."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from otpd.clock import Clock
from otpd.errors import ValidationError
from otpd.webhooks.events import (
    DeliveryEvent,
    DeliveryOutcome,
    WebhookRefusedError,
    check_fresh,
)

__all__ = ["SendGridWebhook", "load_public_key"]

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The key as SendGrid shows it (base64 DER SubjectPublicKeyInfo) or as PEM;
    raises ValueError for anything else."""
    text = text.strip()
    try:
        key = (
            load_pem_public_key(text.encode())
            if text.startswith("-----BEGIN")
            else load_der_public_key(base64.b64decode(text, validate=True))
        )
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a base64 DER or PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


class SendGridWebhook:
    """Verifies a batch of events and refuses timestamps outside the replay window."""

    def __init__(self, *, public_key: str, clock: Clock) -> None:
        self._key = load_public_key(public_key) if public_key else None
        self._clock = clock

    async def events(self, headers: Mapping[str, str], raw_body: bytes) -> list[DeliveryEvent]:
        if self._key is None:
            raise WebhookRefusedError("sendgrid webhooks are not configured")
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        try:
            signature = base64.b64decode(headers.get(SIGNATURE_HEADER, ""), validate=True)
            self._key.verify(signature, timestamp.encode() + raw_body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise WebhookRefusedError("signature is missing or wrong") from exc
        check_fresh(timestamp, self._clock.time())
        try:
            batch = json.loads(raw_body)
        except (ValueError, RecursionError) as exc:
            raise ValidationError.field("body", "must be a JSON array of events") from exc
        if not isinstance(batch, list):
            raise ValidationError.field("body", "must be a JSON array of events")
        return [e for item in batch if (e := _event(item)) is not None]


def _event(item: Any) -> DeliveryEvent | None:
    if not isinstance(item, dict):
        raise ValidationError.field("body", "each event must be an object")
    kind, sg_id, event_id = item.get("event"), item.get("sg_message_id"), item.get("sg_event_id")
    if not (isinstance(kind, str) and isinstance(sg_id, str) and isinstance(event_id, str)):
        raise ValidationError.field("body", "event, sg_message_id and sg_event_id are required")
    permanent, reason = False, ""
    if kind == "delivered":
        outcome = DeliveryOutcome.DELIVERED
    elif kind == "spamreport":
        outcome, permanent = DeliveryOutcome.COMPLAINED, True
    elif kind == "bounce":
        # type "blocked" is the receiving server refusing for now, not a dead address
        outcome, permanent = DeliveryOutcome.BOUNCED, item.get("type", "bounce") == "bounce"
        reason = str(item.get("type", "bounce"))[:32]
    elif kind == "dropped" and item.get("reason") == "Bounced Address":
        outcome, permanent, reason = DeliveryOutcome.BOUNCED, True, "dropped"
    else:
        return None  # processed, deferred, open, click, other drops: nothing to apply
    occurred = item.get("timestamp")
    recipient = item.get("email")
    return DeliveryEvent(
        provider="sendgrid",
        # sg_message_id is "<X-Message-Id>.filter..."; otpd stored the X-Message-Id
        message_id=sg_id.split(".", 1)[0],
        event_id=event_id,
        outcome=outcome,
        occurred_at=float(occurred) if type(occurred) is int and occurred < 2**53 else 0.0,
        reason=reason,
        permanent=permanent,
        recipient=recipient if isinstance(recipient, str) else "",
    )
