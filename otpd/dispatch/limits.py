"""Sending rate limits per recipient and per channel, counted in the store so they hold
across daemon instances."""

from __future__ import annotations

from otpd.config import EmailConfig, SmsConfig
from otpd.crypto import Hasher
from otpd.models import Channel, Message
from otpd.store.base import Limit, LimitExceeded, Store

__all__ = ["SendLimiter"]

HOUR = 3600


class SendLimiter:
    """Email: ``email.per_recipient_hour`` and ``email.global_hour``; SMS:
    ``sms.per_recipient_hour`` (the SMS guard owns the SMS-wide caps).

    Recipients are keyed by a keyed hash of the address, never the address itself.
    """

    def __init__(self, email: EmailConfig, sms: SmsConfig, *, store: Store, hasher: Hasher) -> None:
        self.email = email
        self.sms = sms
        self.store = store
        self.hasher = hasher

    def limits_for(self, message: Message) -> list[Limit]:
        keys = self.store.keys
        channel = message.channel.value
        addr = self.hasher.digest("recipient", channel, message.to.lower())[:32]
        per_recipient = (
            self.email.per_recipient_hour
            if message.channel is Channel.EMAIL
            else self.sms.per_recipient_hour
        )
        limits = [
            Limit(
                f"{channel}_recipient_hour",
                keys.address_limit(addr, f"{channel}_send", HOUR),
                per_recipient,
                HOUR,
            )
        ]
        if message.channel is Channel.EMAIL:
            limits.append(
                Limit(
                    "email_global_hour",
                    keys.global_limit("email_send", HOUR),
                    self.email.global_hour,
                    HOUR,
                )
            )
        return limits

    async def admit(self, message: Message, member: str, now: float) -> LimitExceeded | None:
        """Count one send of ``message`` unless a limit is full (then count nothing)."""
        return await self.store.hit_limits(self.limits_for(message), member, now)
