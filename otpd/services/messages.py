"""Generic sends: a template or a raw message to one recipient, with idempotency keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from otpd.dispatch import new_task_id
from otpd.errors import RateLimitedError, UnavailableError, ValidationError
from otpd.models import Channel, Message
from otpd.services.deps import ServiceDeps
from otpd.validation import (
    MAX_EMAIL_TEXT,
    MAX_IDEMPOTENCY_KEY,
    MAX_SMS_TEXT,
    MAX_SUBJECT,
    check_locale,
    normalize_email,
    normalize_phone,
)

__all__ = ["IDEMPOTENCY_TTL", "MessageService", "SendAccepted", "SmsAdmission"]

log = structlog.get_logger("otpd.messages")

IDEMPOTENCY_TTL = 86400


class SmsAdmission(Protocol):
    """Anything that may refuse an SMS before it is queued (the fraud and cost guard)."""

    async def admit(self, phone_e164: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SendAccepted:
    task_id: str
    replayed: bool = False


class MessageService:
    def __init__(self, deps: ServiceDeps, *, sms_guard: SmsAdmission | None = None) -> None:
        self.store = deps.store
        self.dispatcher = deps.dispatcher
        self.renderer = deps.renderer
        self.hasher = deps.hasher
        self.clock = deps.clock
        self.sms_guard = sms_guard

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
        """Queue one message. The same ``idempotency_key`` (per API client) within 24 h
        returns the first task instead of sending again."""
        message = await self._build(channel, to, template, context, locale, subject, text, html)
        task_id = new_task_id()
        if idempotency_key is not None:
            if (
                not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
                or not idempotency_key.isprintable()
            ):
                raise ValidationError.field(
                    "idempotency_key", f"1 to {MAX_IDEMPOTENCY_KEY} printable characters"
                )
            ref = self.hasher.digest("idempotency", client, idempotency_key)
            first = await self.store.remember("messages", ref, task_id, IDEMPOTENCY_TTL)
            if first is not None:
                log.info("message.idempotent_replay", task_id=first, client=client)
                return SendAccepted(first, replayed=True)
        try:
            if message.channel is Channel.SMS and self.sms_guard is not None:
                # after the idempotency check, so a replay never counts against the guard
                await self.sms_guard.admit(message.to)
            record = await self.dispatcher.enqueue(message, task_id=task_id)
        except (UnavailableError, RateLimitedError) as exc:
            if idempotency_key is not None:
                # the key now names this task: leave it visibly failed, not missing
                await self.dispatcher.reject(message, f"{exc.code}: not queued", task_id=task_id)
            raise
        log.info("message.queued", task_id=record.task_id, channel=channel, tag=message.tag)
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
