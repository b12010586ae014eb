"""Generic sends: a template or a raw message to one recipient, with idempotency keys.

An ``idempotency_key`` follows the IETF httpapi Idempotency-Key draft: the key (per API
client) is claimed in the store together with a keyed hash of the canonical request, so
the same request again answers the first task, another request under the same key is
refused (422 ``idempotency_key_reused``), and one that arrives while the first is still
being processed is told to retry (409 ``idempotency_key_in_use``).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from otpd.errors import (
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    RateLimitedError,
    ValidationError,
)
from otpd.models import Channel, Message
from otpd.services.deps import ServiceDeps
from otpd.store import ClaimState
from otpd.validation import (
    MAX_EMAIL_TEXT,
    MAX_IDEMPOTENCY_KEY,
    MAX_SMS_TEXT,
    MAX_SUBJECT,
    check_locale,
    normalize_email,
    normalize_phone,
)

__all__ = [
    "IDEMPOTENCY_LEASE",
    "IDEMPOTENCY_SCOPE",
    "IDEMPOTENCY_TTL",
    "MessageService",
    "SendAccepted",
    "SmsAdmission",
]

log = structlog.get_logger("otpd.messages")

IDEMPOTENCY_TTL = 86400
"""How long a settled key answers with its first task (seconds)."""
IDEMPOTENCY_LEASE = 60
"""How long a key stays claimed by a request that has not settled it: far longer than a
request takes, short enough that a daemon that died mid-request frees the key soon."""
IDEMPOTENCY_SCOPE = "messages"


class SmsAdmission(Protocol):
    """Anything that may refuse an SMS before it is queued (the fraud and cost guard)."""

    async def admit(self, phone_e164: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SendAccepted:
    task_id: str
    replayed: bool = False


def canonical_request(message: Message, fields: dict[str, Any]) -> str:
    """The request as validated, in one spelling: normalised recipient, sorted keys, no
    whitespace; what an idempotency key is bound to."""
    payload = {**fields, "channel": message.channel.value, "to": message.to}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


class MessageService:
    def __init__(self, deps: ServiceDeps, *, sms_guard: SmsAdmission | None = None) -> None:
        self.store = deps.store
        self.dispatcher = deps.dispatcher
        self.renderer = deps.renderer
        self.hasher = deps.hasher
        self.clock = deps.clock
        self.limits = deps.limits
        self.sms_guard = sms_guard
        self.audit = deps.audit

    async def send(
        self,
        *,
        channel: str,
        to: str,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        locale: str | None = None,
        subject: str | None = None,
        text: str | None = None,
        html: str | None = None,
        idempotency_key: str | None = None,
        client: str = "default",
    ) -> SendAccepted:
        """Queue one message.

        With an ``idempotency_key`` (scoped to the API ``client``), the same request within
        24 h returns the first task instead of sending again; a different request under the
        key raises :class:`IdempotencyKeyReusedError`, and one made while the first is
        still being processed :class:`IdempotencyKeyInUseError`. A request that fails
        before its task exists (a limit, a full queue) frees the key for a retry.
        """
        if idempotency_key is not None and (
            not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
            or not idempotency_key.isprintable()
        ):
            raise ValidationError.field(
                "idempotency_key", f"1 to {MAX_IDEMPOTENCY_KEY} printable characters"
            )
        message = await self._build(channel, to, template, context, locale, subject, text, html)
        if idempotency_key is None:
            return await self._queue(message)

        ref = self.hasher.digest("idempotency", client, idempotency_key)
        fields = {
            "template": template,
            "context": context,
            "locale": check_locale(locale),
            "subject": subject,
            "text": text,
            "html": html,
        }
        # a keyed hash: the store never holds the recipient or the body
        fingerprint = self.hasher.digest("idempotency-request", canonical_request(message, fields))
        claim = await self.store.claim(IDEMPOTENCY_SCOPE, ref, fingerprint, IDEMPOTENCY_LEASE)
        if claim.state is not ClaimState.CLAIMED:
            if not hmac.compare_digest(claim.fingerprint, fingerprint):
                log.info("message.idempotency_key_reused", client=client)
                raise IdempotencyKeyReusedError()
            if claim.state is ClaimState.PENDING:
                log.info("message.idempotency_key_in_use", client=client)
                raise IdempotencyKeyInUseError()
            log.info("message.idempotent_replay", task_id=claim.value, client=client)
            return SendAccepted(claim.value, replayed=True)

        try:
            accepted = await self._queue(message)
        except BaseException:
            # nothing was queued: the key must not name a task that does not exist, and a
            # retry (after a 429's Retry-After, a 503) must be able to go ahead
            try:
                await self.store.release(IDEMPOTENCY_SCOPE, ref, fingerprint)
            except Exception:
                # the store is down too: the claim's lease frees the key soon
                log.warning("message.idempotency_not_released", client=client)
            raise
        try:
            await self.store.settle(
                IDEMPOTENCY_SCOPE, ref, fingerprint, accepted.task_id, IDEMPOTENCY_TTL
            )
        except Exception:
            # The message is queued, so the answer is still 202. The key stays claimed
            # until its lease ends: a retry meanwhile is told 409, not sent twice.
            log.warning("message.idempotency_not_saved", task_id=accepted.task_id, client=client)
        return accepted

    async def _queue(self, message: Message) -> SendAccepted:
        if message.channel is Channel.SMS and self.sms_guard is not None:
            # after the idempotency claim, so a replay never counts against the guard
            try:
                await self.sms_guard.admit(message.to)
            except RateLimitedError as exc:
                self.limits.record_refusal([message], exc)
                await self.audit.record(
                    "sms_blocked",
                    channel=message.channel.value,
                    recipient=message.to,
                    reason=exc.details.get("reason") or exc.details.get("scope"),
                    tag=message.tag,
                )
                raise
        message = dataclasses.replace(message, audit=self.audit.context())
        record = await self.dispatcher.enqueue(message)
        log.info(
            "message.queued",
            task_id=record.task_id,
            channel=message.channel.value,
            tag=message.tag,
        )
        return SendAccepted(record.task_id)

    async def _build(
        self,
        channel: str,
        to: str,
        template: str | None,
        context: dict[str, Any] | None,
        locale: str | None,
        subject: str | None,
        text: str | None,
        html: str | None,
    ) -> Message:
        try:
            kind = Channel(channel)
        except ValueError:
            raise ValidationError.field("channel", "must be email or sms") from None
        locale = check_locale(locale)
        raw = {"subject": subject, "text": text, "html": html}
        given = sorted(k for k, v in raw.items() if v is not None)
        if template is not None and given:
            raise ValidationError(
                "send either a template or a raw message",
                fields={k: "not allowed together with template" for k in given},
            )
        if context is not None and template is None:
            raise ValidationError.field("context", "only allowed with template")
        if kind is Channel.EMAIL:
            address = normalize_email(to, "to")
            if template is not None:
                if not self.renderer.exists(template, "html"):
                    raise ValidationError.field("template", f"unknown email template {template!r}")
                rendered = await self.renderer.render_email(template, context or {}, locale)
                return Message(
                    kind, address, rendered.text, rendered.subject, rendered.html, tag=template
                )
            problems = {k: "required without template" for k in ("subject", "text") if not raw[k]}
            if problems:
                raise ValidationError("subject and text are required", fields=problems)
            assert subject is not None
            assert text is not None
            if len(subject) > MAX_SUBJECT:
                raise ValidationError.field("subject", f"at most {MAX_SUBJECT} characters")
            if len(text) > MAX_EMAIL_TEXT or len(html or "") > MAX_EMAIL_TEXT:
                raise ValidationError.field("text", f"at most {MAX_EMAIL_TEXT} characters")
            return Message(kind, address, text, subject, html or "", tag="raw")

        number = normalize_phone(to, "to")
        for name in ("subject", "html"):
            if raw[name] is not None:
                raise ValidationError.field(name, "not used for sms")
        if template is not None:
            if not self.renderer.exists(template, "sms"):
                raise ValidationError.field("template", f"unknown sms template {template!r}")
            body = await self.renderer.render_sms(template, context or {}, locale)
            tag = template
        elif text:
            body, tag = text, "raw"
        else:
            raise ValidationError.field("text", "required without template")
        if len(body) > MAX_SMS_TEXT:
            raise ValidationError.field("text", f"at most {MAX_SMS_TEXT} characters")
        return Message(kind, number, body, tag=tag)
