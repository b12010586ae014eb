"""Channel fallback: a code whose first channel fails is sent, once, on the other one.

``POST /v1/otp`` with ``fallback`` keeps a trail of the code (:mod:`otpd.store.trails`)
holding the fallback message, rendered with the same code and sealed. When the first
channel's task ends ``failed`` (the dispatcher) or ``undelivered``/``bounced`` (a provider's
report) before ``otp.fallback_after_seconds`` have passed, the store hands the sealed
message out exactly once and it is queued as a new task: the code, its expiry and its
attempts are the code's own and do not change. A fallback SMS passes the SMS pumping guard
when it is sent (a failing email must not open a way around it); one it refuses is recorded
as a failed task on the trail. Nothing is sent after the code was verified or expired.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import structlog

from otpd.clock import Clock
from otpd.dispatch.dispatcher import new_task_id
from otpd.errors import SmsBlockedError, UnavailableError, ValidationError
from otpd.metrics import Metrics
from otpd.models import Channel, Delivery, Message, TaskRecord
from otpd.sealing import Keyring, SealError
from otpd.services.audit import AuditTrail
from otpd.store import Store
from otpd.store.trails import OtpTrail, TrailDelivery

__all__ = ["ChannelFallback", "Enqueuer", "SmsAdmission"]

log = structlog.get_logger("otpd.fallback")


class Enqueuer(Protocol):
    """The dispatcher, as far as a fallback is queued through it."""

    async def enqueue(self, message: Message, *, task_id: str | None = None) -> TaskRecord: ...

    async def reject(
        self, message: Message, reason: str, *, task_id: str | None = None
    ) -> TaskRecord: ...


class SmsAdmission(Protocol):
    """The SMS pumping guard, counted when a fallback SMS is sent."""

    async def admit(self, phone_e164: str) -> None: ...


def _binding(otp_id: str) -> str:
    return f"otp-fallback:{otp_id}"


class ChannelFallback:
    """Keeps the trails of codes issued with a fallback and sends their fallbacks."""

    def __init__(
        self,
        store: Store,
        *,
        keyring: Keyring,
        clock: Clock,
        metrics: Metrics,
        audit: AuditTrail,
        after_seconds: int,
        trail_ttl: int,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.clock = clock
        self.metrics = metrics
        self.audit = audit
        self.after_seconds = after_seconds
        self.trail_ttl = trail_ttl
        self.dispatcher: Enqueuer | None = None
        self.sms_guard: SmsAdmission | None = None

    def attach(self, dispatcher: Enqueuer, sms_guard: SmsAdmission) -> None:
        """Name the dispatcher and the guard (made after this: the dispatcher calls
        :meth:`task_failed` of this very object)."""
        self.dispatcher = dispatcher
        self.sms_guard = sms_guard

    async def keep(
        self, otp_id: str, first: Delivery, fallback: Message, created_at: float
    ) -> None:
        """Keep the trail of a just issued code; raises UnavailableError only."""
        trail = OtpTrail(
            otp_id=otp_id,
            created_at=created_at,
            expires_at=fallback.expires_at,
            fallback_channel=fallback.channel.value,
            fallback_until=created_at + self.after_seconds,
            deliveries=(TrailDelivery(first.channel.value, first.task_id),),
        )
        sealed = self.keyring.seal(fallback.to_json(), _binding(otp_id))
        ttl = max(self.trail_ttl, round(fallback.expires_at - created_at) + 1)
        await self.store.put_trail(trail, sealed, ttl)

    async def trail(self, otp_id: str) -> OtpTrail | None:
        return await self.store.get_trail(otp_id)

    async def verified(self, otp_id: str) -> None:
        """Record a verified code: its fallback is not sent any more. Never raises."""
        try:
            await self.store.trail_verified(otp_id, self.clock.time())
        except UnavailableError:
            log.warning("otp.fallback_not_closed", otp_id=otp_id, why="store unavailable")

    async def task_failed(self, record: TaskRecord) -> None:
        """The task ended failed or undelivered: send its code's fallback if it has one
        that is due. Never raises (a fallback that cannot go is logged and audited)."""
        if not record.otp_id or self.dispatcher is None:
            return
        otp_id = record.otp_id
        task_id = new_task_id()
        try:
            # the fallback is the other channel (a code with a fallback has one first channel)
            other = Channel.EMAIL if record.channel is Channel.SMS else Channel.SMS
            delivery = TrailDelivery(other.value, task_id, fallback=True)
            sealed = await self.store.take_fallback(
                otp_id, record.task_id, delivery, self.clock.time()
            )
        except UnavailableError:
            log.warning("otp.fallback_not_sent", otp_id=otp_id, why="store unavailable")
            return
        if sealed is None:
            return
        try:
            message = Message.from_json(self.keyring.open(sealed, _binding(otp_id)))
        except (SealError, ValueError, TypeError):
            log.warning("otp.fallback_unreadable", otp_id=otp_id)
            return
        await self._send(otp_id, record, message, task_id)

    async def _send(self, otp_id: str, failed: TaskRecord, message: Message, task_id: str) -> None:
        assert self.dispatcher is not None
        channel = message.channel.value
        refusal = await self._guard(message)
        try:
            if refusal is None:
                await self.dispatcher.enqueue(message, task_id=task_id)
            else:
                await self.dispatcher.reject(message, refusal, task_id=task_id)
        except UnavailableError:
            log.warning("otp.fallback_not_sent", otp_id=otp_id, why="not queued")
            refusal = "unavailable: the fallback could not be queued"
            with contextlib.suppress(UnavailableError):  # the log line above says it
                await self.dispatcher.reject(message, refusal, task_id=task_id)
        self.metrics.otp_fallbacks.labels(channel, "sent" if refusal is None else "refused").inc()
        await self.audit.record(
            "otp_fallback",
            otp_id=otp_id,
            channel=channel,
            recipient=message.to,
            task_id=task_id,
            failed_task_id=failed.task_id,
            reason=refusal.partition(":")[0] if refusal else None,
            **{k: v for k, v in message.audit if k in ("user_id", "purpose")},
        )
        log.info(
            "otp.fallback",
            otp_id=otp_id,
            channel=channel,
            task_id=task_id,
            failed_task_id=failed.task_id,
            refused=refusal.partition(":")[0] if refusal else None,
        )

    async def _guard(self, message: Message) -> str | None:
        """The SMS guard's refusal of a fallback SMS as a task error, or None."""
        if message.channel is not Channel.SMS or self.sms_guard is None:
            return None
        try:
            await self.sms_guard.admit(message.to)
        except SmsBlockedError as exc:
            return f"sms_blocked: {exc.reason}"
        except ValidationError as exc:
            return f"sms_blocked: {exc.message}"
        except UnavailableError:
            return "unavailable: the SMS guard could not be asked"
        return None
