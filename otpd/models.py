"""Plain values passed between layers."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from otpd.clock import rfc3339

__all__ = [
    "Channel",
    "DeadLetter",
    "Delivery",
    "Message",
    "OtpChannel",
    "OtpDelivery",
    "OtpIssued",
    "OtpStatus",
    "ProviderHealth",
    "SendResult",
    "TaskRecord",
    "TaskStatus",
    "VerifyReason",
    "VerifyResult",
]


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"


class OtpChannel(enum.StrEnum):
    """Where an OTP code goes; ``both`` sends the same code by email and SMS."""

    EMAIL = "email"
    SMS = "sms"
    BOTH = "both"

    def channels(self) -> tuple[Channel, ...]:
        if self is OtpChannel.BOTH:
            return (Channel.EMAIL, Channel.SMS)
        return (Channel(self.value),)


class TaskStatus(enum.StrEnum):
    """Where a delivery is. ``sent`` means a provider accepted it; what the provider
    reported afterwards (its webhooks) moves it on to ``delivered``, ``bounced``,
    ``complained`` or ``undelivered``."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNDELIVERED = "undelivered"

    @property
    def final(self) -> bool:
        """No delivery attempt follows (what a provider reports later may still come)."""
        return self not in (TaskStatus.QUEUED, TaskStatus.SENDING, TaskStatus.RETRYING)

    @property
    def reported(self) -> bool:
        """A status only a provider's report sets."""
        return self in _REPORTED

    def replaced_by(self) -> tuple[TaskStatus, ...]:
        """The statuses a provider's report of this status may replace: reports apply in
        any order, and a later, weaker one never undoes a stronger one (a late
        ``delivered`` never turns ``bounced`` back; a complaint follows a delivery)."""
        return _REPLACES.get(self, ())


_REPORTED = frozenset(
    {TaskStatus.DELIVERED, TaskStatus.BOUNCED, TaskStatus.COMPLAINED, TaskStatus.UNDELIVERED}
)
_REPLACES = {
    TaskStatus.DELIVERED: (TaskStatus.SENT,),
    TaskStatus.BOUNCED: (TaskStatus.SENT, TaskStatus.DELIVERED),
    TaskStatus.UNDELIVERED: (TaskStatus.SENT, TaskStatus.DELIVERED),
    TaskStatus.COMPLAINED: (
        TaskStatus.SENT,
        TaskStatus.DELIVERED,
        TaskStatus.BOUNCED,
        TaskStatus.UNDELIVERED,
    ),
}


class VerifyReason(enum.StrEnum):
    INVALID_CODE = "invalid_code"
    NO_ACTIVE_CODE = "no_active_code"
    TOO_MANY_ATTEMPTS = "too_many_attempts"


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered message to one recipient.

    ``to`` is an email address or an E.164 number. ``subject`` and ``html`` are
    email-only. ``tag`` names what the message is (``otp_code``, ``password_reset``) for
    metrics and logs; it never contains personal data. ``limits_counted`` is set when the
    caller already counted the sending limits atomically with its own (OTP issue).
    ``expires_at`` (UNIX seconds, 0 for never) is when what the message carries stops
    working (an OTP code, a link token): it is not sent after that. ``audit`` is what the
    audit record of its delivery names besides the message (user, OTP, client), as pairs;
    never a code, a token or an address.
    """

    channel: Channel
    to: str
    text: str
    subject: str = ""
    html: str = ""
    tag: str = "message"
    headers: tuple[tuple[str, str], ...] = ()
    limits_counted: bool = False
    expires_at: float = 0.0
    audit: tuple[tuple[str, str], ...] = ()

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now >= self.expires_at

    @property
    def otp_id(self) -> str:
        """The OTP the message carries, as its audit fields name it ("" for none)."""
        return next((value for name, value in self.audit if name == "otp_id"), "")

    def to_json(self) -> bytes:
        """The message as compact JSON (to be sealed before it is stored anywhere)."""
        return json.dumps(
            [
                self.channel.value,
                self.to,
                self.text,
                self.subject,
                self.html,
                self.tag,
                [list(h) for h in self.headers],
                self.limits_counted,
                self.expires_at,
                [list(pair) for pair in self.audit],
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Message:
        # a message sealed by a release before the audit trail has nine fields
        channel, to, text, subject, html, tag, headers, counted, expires_at, *rest = json.loads(
            data
        )
        audit = rest[0] if rest else []
        return cls(
            Channel(channel),
            to,
            text,
            subject,
            html,
            tag,
            tuple((str(name), str(value)) for name, value in headers),
            bool(counted),
            float(expires_at),
            tuple((str(name), str(value)) for name, value in audit),
        )


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a provider answered for a delivered message."""

    provider: str
    message_id: str = ""


@dataclass(slots=True)
class TaskRecord:
    """The stored, observable state of one delivery. It never holds the message body."""

    task_id: str
    channel: Channel
    status: TaskStatus
    tag: str
    created_at: float
    updated_at: float
    attempts: int = 0
    provider: str = ""
    last_error: str = ""
    provider_message_id: str = ""
    delivered_at: float = 0.0
    """When the provider reported the message delivered (0: not reported)."""
    reason: str = ""
    """The provider's reason for a bounce, a complaint or an undelivered message."""
    otp_id: str = ""
    """The code the message carries, when it carries one (not shown: the OTP answers it)."""

    def to_public(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "channel": self.channel.value,
            "attempts": self.attempts,
            "provider": self.provider or None,
            "last_error": self.last_error or None,
            "provider_message_id": self.provider_message_id or None,
            "delivered_at": rfc3339(self.delivered_at) if self.delivered_at else None,
            "reason": self.reason or None,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that failed for good, kept for a while so that it can be replayed."""

    task_id: str
    channel: str
    recipient: str  # masked
    last_error: str
    attempts: int
    failed_at: float

    def to_public(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "channel": self.channel,
            "recipient": self.recipient,
            "last_error": self.last_error,
            "attempts": self.attempts,
            "failed_at": rfc3339(self.failed_at),
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: Channel
    task_id: str


@dataclass(frozen=True, slots=True)
class OtpIssued:
    otp_id: str
    expires_at: float
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class OtpDelivery:
    """One task that carries a code, with its status; ``fallback`` marks the one sent on
    the other channel after the first failed."""

    channel: Channel
    task_id: str
    status: str
    fallback: bool = False

    def to_public(self) -> dict[str, Any]:
        return {
            "channel": self.channel.value,
            "task_id": self.task_id,
            "status": self.status,
            "fallback": self.fallback,
        }


@dataclass(frozen=True, slots=True)
class OtpStatus:
    """Where a code issued with a fallback went: ``status`` is ``pending``, ``verified``
    or ``expired``."""

    otp_id: str
    status: str
    expires_at: float
    deliveries: tuple[OtpDelivery, ...]

    def to_public(self) -> dict[str, Any]:
        return {
            "otp_id": self.otp_id,
            "status": self.status,
            "expires_at": rfc3339(self.expires_at),
            "deliveries": [d.to_public() for d in self.deliveries],
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    verified: bool
    reason: VerifyReason | None = None
    attempts_left: int = 0


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """A provider's place in its chain and its circuit breaker's view of it."""

    name: str
    channel: Channel
    state: str
    consecutive_failures: int
    last_error: str | None
    last_success_at: float | None
    details: dict[str, Any] = field(default_factory=dict)
