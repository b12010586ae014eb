"""What a provider says happened to a message after it accepted it."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from otpd.errors import UnauthorizedError

__all__ = [
    "REPLAY_WINDOW",
    "DeliveryEvent",
    "DeliveryOutcome",
    "EventSink",
    "Verifier",
    "WebhookRefusedError",
    "check_fresh",
]

REPLAY_WINDOW = 300
"""Seconds a signed webhook stays acceptable either side of now (its signed timestamp)."""


class DeliveryOutcome(enum.StrEnum):
    """The task status an event moves a ``sent`` task to."""

    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNDELIVERED = "undelivered"


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One provider event about one message.

    ``message_id`` is the provider's id of the message exactly as the provider's send API
    returned it (and as ``SendResult.message_id`` holds it): the parser normalises the
    event's form to that (Mailgun's angle brackets, SendGrid's ``.filter...`` suffix).
    ``event_id`` is stable across the provider's retries of the same event (its own event
    id, or a hash of the fields that identify the event) and is how a repeat is dropped.
    ``permanent`` marks what suppresses the recipient: a permanent bounce, a complaint, an
    SMS opt-out. ``reason`` is the provider's short reason (a code and its class, never the
    recipient or a free-text diagnostic that may quote it). ``recipient`` is the address or
    number the event names, in clear, for the suppression list only: never logged.
    """

    provider: str
    message_id: str
    event_id: str
    outcome: DeliveryOutcome
    occurred_at: float
    reason: str = ""
    permanent: bool = False
    recipient: str = ""


class WebhookRefusedError(UnauthorizedError):
    """A webhook whose signature is missing, wrong, stale or replayed: a 401 that changes
    nothing. ``message`` says which of those, never what the signature should have been."""

    code = "invalid_signature"


class EventSink(Protocol):
    """Where verified events go (the delivery status service)."""

    async def apply(self, events: Sequence[DeliveryEvent]) -> None:
        """Apply ``events`` idempotently and in any order; raises only UnavailableError."""


class Verifier(Protocol):
    """One provider's webhook check: its verified events, or WebhookRefusedError (401),
    ValidationError (422, a signed body that is not a report) or UnavailableError."""

    async def events(self, headers: Mapping[str, str], raw_body: bytes) -> list[DeliveryEvent]: ...


def check_fresh(timestamp: str, now: float) -> None:
    """Refuse a signed timestamp (UNIX seconds, ASCII digits) more than
    :data:`REPLAY_WINDOW` away from ``now``."""
    ok = timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
    if not ok or abs(now - int(timestamp)) > REPLAY_WINDOW:
        raise WebhookRefusedError("signature is stale")
