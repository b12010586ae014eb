"""Issue and verify one-time passcodes."""

from __future__ import annotations

import dataclasses

from otpd.config import OtpConfig
from otpd.config.sections import fixed_code_key
from otpd.crypto import new_code, new_id
from otpd.dispatch.dispatcher import new_task_id
from otpd.errors import (
    NotFoundError,
    RecipientSuppressedError,
    SmsBlockedError,
    UnavailableError,
    ValidationError,
)
from otpd.models import (
    Channel,
    Delivery,
    Message,
    OtpChannel,
    OtpDelivery,
    OtpIssued,
    OtpStatus,
    VerifyResult,
)
from otpd.services.deps import ServiceDeps
from otpd.services.fallback import ChannelFallback
from otpd.services.sms_guard import Charge, Sample, SmsGuard
from otpd.store import OtpRecord
from otpd.store.base import Suppressed
from otpd.validation import (
    check_client_ip,
    check_code,
    check_locale,
    check_purpose,
    check_user_agent,
    check_user_id,
    normalize_email,
    parse_phone,
)

__all__ = ["OtpService"]


class OtpService:
    """Codes are random digits from ``secrets``; only their keyed hash is stored."""

    def __init__(
        self,
        config: OtpConfig,
        deps: ServiceDeps,
        *,
        sms_guard: SmsGuard,
        fallback: ChannelFallback | None = None,
    ) -> None:
        self.config = config
        self.deps = deps
        self.store = deps.store
        self.dispatcher = deps.dispatcher
        self.renderer = deps.renderer
        self.hasher = deps.hasher
        self.clock = deps.clock
        self.metrics = deps.metrics
        self.sms_guard = sms_guard
        self.fallback = fallback
        self._fixed_codes = config.fixed_codes()

    def _code_hash(self, user_id: str, purpose: str, code: str) -> str:
        return self.hasher.digest("otp", user_id, purpose, code)

    async def issue(
        self,
        *,
        user_id: str,
        channel: OtpChannel | str,
        email: str | None = None,
        phone: str | None = None,
        purpose: str = "login",
        locale: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
        fallback: OtpChannel | str | None = None,
    ) -> OtpIssued:
        """Replace any live code of ``(user_id, purpose)`` with a new one and send it;
        with ``fallback`` (the other channel), send it there too if the first channel
        fails (:mod:`otpd.services.fallback`)."""
        check_user_id(user_id)
        check_purpose(purpose)
        locale = check_locale(locale)
        client_ip = check_client_ip(client_ip)
        user_agent = check_user_agent(user_agent)
        try:
            otp_channel = OtpChannel(channel)
        except ValueError:
            raise ValidationError.field("channel", "must be email, sms or both") from None
        fallback_channel = self._fallback_channel(otp_channel, fallback)
        channels = otp_channel.channels()
        if fallback_channel is not None:
            channels = (*channels, fallback_channel)
        problems: dict[str, str] = {}
        if Channel.EMAIL in channels and not email:
            problems["email"] = f"required for channel {otp_channel.value} and its fallback"
        if Channel.SMS in channels and not phone:
            problems["phone"] = f"required for channel {otp_channel.value} and its fallback"
        if problems:
            raise ValidationError("an address is missing for the chosen channel", fields=problems)
        fixed = self._fixed_code(
            email if Channel.EMAIL in channels else None, phone if Channel.SMS in channels else None
        )
        if fixed is not None:
            return await self._issue_fixed(
                fixed, user_id, otp_channel, purpose, client_ip, user_agent
            )
        to_email = normalize_email(email) if email and Channel.EMAIL in channels else None
        target = None  # the SMS the issue script counts: not a fallback SMS (see fallback)
        to_phone = None
        if phone and Channel.SMS in channels:
            sms = self.sms_guard.target(parse_phone(phone))
            try:
                self.sms_guard.check_static(sms)
            except SmsBlockedError as exc:
                await self._sms_blocked(exc, user_id, purpose, sms.e164, client_ip, user_agent)
                raise
            to_phone = sms.e164
            target = None if fallback_channel is Channel.SMS else sms
        # suppressed recipients are refused by the issue script itself (no round trip)
        suppressed_fields: list[str] = []
        suppressed_hashes: list[str] = []
        if self.deps.suppressions is not None:
            recipients = {"email": to_email, "phone": to_phone}
            suppressed_fields, suppressed_hashes = self.deps.suppressions.hashes(
                {f: a for f, a in recipients.items() if a}
            )

        code = new_code(self.config.length)
        context = {"ttl_minutes": max(1, self.config.ttl_seconds // 60)}
        messages: list[Message] = []
        # the fallback message goes last: rendered now with the same code, sent only if
        # the first channel fails (its sending limits are counted then, by the dispatcher)
        if to_email:
            rendered = await self.renderer.render_email("otp_code", context, locale, code=code)
            messages.append(
                Message(
                    Channel.EMAIL,
                    to_email,
                    rendered.text,
                    rendered.subject,
                    rendered.html,
                    "otp_code",
                    limits_counted=True,
                )
            )
        if to_phone:
            text = await self.renderer.render_sms("otp_code", context, locale, code=code)
            messages.append(
                Message(Channel.SMS, to_phone, text, tag="otp_code", limits_counted=True)
            )
        spare = None
        if fallback_channel is not None:
            spare = next(m for m in messages if m.channel is fallback_channel)
            messages.remove(spare)
            spare = dataclasses.replace(spare, limits_counted=False)

        # Every counter goes into the one issue script, all counted or none: the user and
        # IP limits, the per-recipient sending limits and, for SMS, the fraud guard's caps
        # and range velocity. A refusal by any of them is a 429 up front.
        policy = self.deps.limits
        limits = policy.otp(user_id, client_ip)
        for message in messages:
            limits += policy.sending(message)
        charge = sample = None
        if target is not None:
            limits += self.sms_guard.limits(target)
            try:
                charge = await self.sms_guard.charge_budget(target)
                # the range's conversion: counted here, taken back if the code is refused
                sample = await self.sms_guard.count_code(target)
            except SmsBlockedError as exc:
                if charge is not None:
                    await self.sms_guard.refund(charge)
                await self._sms_blocked(exc, user_id, purpose, target.e164, client_ip, user_agent)
                raise

        now = self.clock.time()
        record = self._record(user_id, purpose, code, otp_channel, client_ip, user_agent, now)
        if spare is not None:
            record = dataclasses.replace(record, tracked=True)
        if sample is not None:
            record = dataclasses.replace(record, range_hash=sample.range_hash)
        audit = self.deps.audit
        carried = audit.context(
            user_id=user_id,
            otp_id=record.otp_id,
            purpose=purpose,
            client_ip=client_ip,
            user_agent=user_agent,
        )
        # not sent once the code it carries has expired
        messages = [
            dataclasses.replace(m, expires_at=record.expires_at, audit=carried) for m in messages
        ]
        # The durable queue's tasks ride in the issue script (one round trip for the code
        # and its deliveries) unless a fallback's trail must be written between the two.
        prepared = [] if spare is not None else [self.dispatcher.prepare(m) for m in messages]
        riding = [p for p in prepared if p is not None]
        if len(riding) != len(messages):
            riding = []  # all of them or none: the rest is queued after the issue
        issued = {
            "otp_id": record.otp_id,
            "user_id": user_id,
            "purpose": purpose,
            "channel": otp_channel.value,
            "client_ip": client_ip,
            "user_agent": user_agent,
        }
        addresses = [m.to for m in messages]
        # with every task riding, the record is whole before the script and kept by it
        draft = (
            audit.draft(
                user_id,
                "otp_issued",
                recipient=addresses,
                **issued,
                task_id=[p.job.record.task_id for p in riding],
            )
            if riding
            else None
        )
        try:
            refused = await self.store.issue_otp(
                user_id,
                record,
                limits,
                now,
                unless_suppressed=suppressed_hashes,
                enqueue=[p.queued for p in riding],
                audit=draft,
            )
        except UnavailableError:
            await self._take_back(charge, sample)
            raise
        if refused is not None:
            await self._take_back(charge, sample)
            if isinstance(refused, Suppressed):
                raise RecipientSuppressedError(suppressed_fields[refused.index])
            policy.record_refusal(messages, refused)
            error = policy.error(refused, "otp", "too many codes requested; try again later")
            await self.deps.audit.record(
                "sms_blocked" if error.code == "sms_blocked" else "otp_rate_limited",
                user_id=user_id,
                purpose=purpose,
                channel=otp_channel.value,
                recipient=[m.to for m in messages],
                reason=refused.scope,
                scope=refused.scope,
                client_ip=client_ip,
                user_agent=user_agent,
            )
            raise error

        deliveries = [
            Delivery(p.job.message.channel, self.dispatcher.accepted(p).task_id) for p in riding
        ]
        # what the issue script did not queue (the in-process queue, a fallback store, a
        # code with a fallback)
        unqueued = [] if riding else messages
        first_task_id = None
        if spare is not None:
            # the trail first: the first task may fail as soon as it is queued
            first_task_id = new_task_id()
            spare = dataclasses.replace(spare, expires_at=record.expires_at, audit=carried)
            first = Delivery(messages[0].channel, first_task_id)
            await self._trails().keep(record.otp_id, first, spare, now)
        for message in unqueued:
            task = await self.dispatcher.enqueue(message, task_id=first_task_id)
            deliveries.append(Delivery(message.channel, task.task_id))
        self.metrics.otp_issued.labels(otp_channel.value).inc()
        task_ids = [d.task_id for d in deliveries]
        if draft is not None:  # the store kept the record with the code
            audit.logged(
                "otp_issued", masked=draft.record.get("recipient"), **issued, task_id=task_ids
            )
        else:
            await audit.record("otp_issued", recipient=addresses, **issued, task_id=task_ids)
        return OtpIssued(record.otp_id, record.expires_at, tuple(deliveries))

    async def _take_back(self, charge: Charge | None, sample: Sample | None) -> None:
        """Give back what the SMS guard counted for a code that is not sent after all."""
        if charge is not None:
            await self.sms_guard.refund(charge)
        if sample is not None:
            await self.sms_guard.uncount(sample)

    def _fallback_channel(
        self, channel: OtpChannel, fallback: OtpChannel | str | None
    ) -> Channel | None:
        """The channel a code goes to when its first one fails, or None."""
        if fallback is None:
            return None
        try:
            chosen = Channel(fallback)
        except ValueError:
            raise ValidationError.field("fallback", "must be email or sms") from None
        if channel is OtpChannel.BOTH or chosen.value == channel.value:
            raise ValidationError.field(
                "fallback", "must be the other channel of a code sent by email or by sms"
            )
        return chosen

    def _trails(self) -> ChannelFallback:
        if self.fallback is None:
            raise UnavailableError("channel fallback is not set up in this daemon")
        return self.fallback

    async def status(self, otp_id: str) -> OtpStatus:
        """Where a code issued with a fallback went, and whether it was verified."""
        if not (otp_id.startswith("otp_") and len(otp_id) <= 64 and otp_id.isascii()):
            raise NotFoundError("no such code (only codes issued with a fallback are kept)")
        trail = await self._trails().trail(otp_id)
        if trail is None:
            raise NotFoundError("no such code (only codes issued with a fallback are kept)")
        tasks = [await self.store.get_task(d.task_id) for d in trail.deliveries]
        now = self.clock.time()
        if trail.verified_at:
            state = "verified"
        elif now >= trail.expires_at:
            state = "expired"
        else:
            state = "pending"
        return OtpStatus(
            otp_id=otp_id,
            status=state,
            expires_at=trail.expires_at,
            deliveries=tuple(
                OtpDelivery(
                    Channel(d.channel),
                    d.task_id,
                    task.status.value if task is not None else "unknown",
                    d.fallback,
                )
                for d, task in zip(trail.deliveries, tasks, strict=True)
            ),
        )

    def _record(
        self,
        user_id: str,
        purpose: str,
        code: str,
        channel: OtpChannel,
        client_ip: str | None,
        user_agent: str | None,
        now: float,
    ) -> OtpRecord:
        """What is stored of a new code: its keyed hash, never the code."""
        return OtpRecord(
            otp_id=new_id("otp"),
            code_hash=self._code_hash(user_id, purpose, code),
            channel=channel.value,
            purpose=purpose,
            created_at=now,
            expires_at=now + self.config.ttl_seconds,
            max_attempts=self.config.max_attempts,
            client_ip=client_ip or "",
            user_agent=user_agent or "",
        )

    def _fixed_code(self, email: str | None, phone: str | None) -> str | None:
        """The fixed code when every address of the request is a test recipient with the
        same code (``otp.test_recipients``), else None."""
        if not self._fixed_codes:
            return None
        codes = set()
        if email is not None:
            key = fixed_code_key(email)
            codes.add(self._fixed_codes.get(key) if key is not None else None)
        if phone is not None:
            codes.add(self._fixed_codes.get(phone))
        if len(codes) != 1:
            return None
        return codes.pop()

    async def _issue_fixed(
        self,
        code: str,
        user_id: str,
        channel: OtpChannel,
        purpose: str,
        client_ip: str | None,
        user_agent: str | None,
    ) -> OtpIssued:
        """A test recipient's code: stored like any other (it verifies, expires and counts
        attempts the same way), but nothing is sent and no limit or budget is counted."""
        now = self.clock.time()
        record = self._record(user_id, purpose, code, channel, client_ip, user_agent, now)
        await self.store.issue_otp(user_id, record, [], now)
        self.metrics.otp_issued.labels(channel.value).inc()
        await self.deps.audit.record(
            "otp_issued",
            otp_id=record.otp_id,
            user_id=user_id,
            purpose=purpose,
            channel=channel.value,
            test_recipient="true",
            client_ip=client_ip,
            user_agent=user_agent,
        )
        return OtpIssued(record.otp_id, record.expires_at, ())

    async def verify(
        self,
        *,
        user_id: str,
        code: str,
        purpose: str = "login",
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> VerifyResult:
        """Check ``code``; a correct code is consumed, wrong ones count towards the limit."""
        check_user_id(user_id)
        check_purpose(purpose)
        client_ip = check_client_ip(client_ip)
        user_agent = check_user_agent(user_agent)
        check_code(code)
        audit = self.deps.audit
        who = {"purpose": purpose, "client_ip": client_ip, "user_agent": user_agent}
        outcome = await self.store.verify_otp(
            user_id,
            purpose,
            self._code_hash(user_id, purpose, code),
            self.clock.time(),
            audit.draft(user_id, **who),  # kept with the outcome, in the same step
        )
        result = outcome.result
        if result.verified and outcome.range_hash:
            await self.sms_guard.credit(outcome.range_hash, outcome.created_at)
        if result.verified and outcome.tracked and self.fallback is not None:
            await self.fallback.verified(outcome.otp_id)
        label = "verified" if result.verified else str(result.reason)
        self.metrics.otp_verified.labels(label).inc()
        audit.logged(
            "otp_verified" if result.verified else "otp_failed",
            log_as="otp_verified" if result.verified else "otp_rejected",
            otp_id=outcome.otp_id or None,
            user_id=user_id,
            channel=outcome.channel or None,
            result=label,
            reason=None if result.verified else label,
            attempts_left=result.attempts_left,
            **who,
        )
        return result

    async def _sms_blocked(
        self,
        exc: SmsBlockedError,
        user_id: str,
        purpose: str,
        phone: str,
        client_ip: str | None,
        user_agent: str | None,
    ) -> None:
        await self.deps.audit.record(
            "sms_blocked",
            user_id=user_id,
            purpose=purpose,
            channel="sms",
            recipient=phone,
            reason=exc.reason,
            client_ip=client_ip,
            user_agent=user_agent,
        )
