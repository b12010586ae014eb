"""The smtp email provider: builds each email and sends it over a connection of its pool."""

from __future__ import annotations

from typing import Any, Self

import aiosmtplib
from aiohttp.abc import AbstractResolver
from aiosmtplib.email import parse_address

from otpd.clock import Clock
from otpd.config import Config, EmailConfig, SmtpConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import Provider, ProviderDeps
from otpd.providers.mime import build_email, one_line
from otpd.providers.smtp.errors import classify_smtp_error, refused_recipients
from otpd.providers.smtp.pipelining import send_mail
from otpd.providers.smtp.pool import SmtpPool, ehlo_name

__all__ = ["SmtpProvider"]


class SmtpProvider(Provider):
    """Sends email through one SMTP relay over a bounded pool of reused connections."""

    name = "smtp"
    channel = Channel.EMAIL

    def __init__(
        self,
        config: SmtpConfig,
        sender: EmailConfig,
        clock: Clock,
        resolver: AbstractResolver | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.sender = sender
        self._pool = SmtpPool(
            config, clock, ehlo_name=ehlo_name(sender.from_address), resolver=resolver
        )

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.smtp, config.email, deps.clock)

    async def open(self) -> None:
        await self._pool.open()

    async def aclose(self) -> None:
        await self._pool.aclose()

    def classify(self, exc: BaseException) -> DeliveryError:
        return classify_smtp_error(exc)

    async def health(self) -> dict[str, Any]:
        return self._pool.health()

    async def _send(self, message: Message) -> SendResult:
        if not self._pool.is_open:
            raise TransientDeliveryError("the smtp provider is not open", reason="not_open")
        recipient = _envelope_recipient(message.to)
        email = build_email(message, self.sender)
        conn = await self._pool.checkout()
        try:
            errors, _ = await send_mail(
                conn.smtp,
                self.sender.from_address,
                [recipient],
                email.data,
                pipelining=self.config.pipelining,
            )
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            # a refusal is a normal reply: RSET was sent, the session is reusable
            # (unless the server closed it, e.g. 421, which checkin notices)
            self._pool.checkin(conn)
            raise
        except BaseException as exc:
            self._pool.discard(conn, type(exc).__name__)
            raise
        self._pool.checkin(conn, delivered=True)
        if errors:
            # only some recipients refused: aiosmtplib returns them instead of raising
            raise refused_recipients([reply.code for reply in errors.values()])
        return SendResult(self.name, email.message_id)


def _envelope_recipient(to: str) -> str:
    """The RCPT TO address, or a permanent error: a malformed address never gets better."""
    address = ""
    if one_line(to) == to.strip():
        try:
            address = parse_address(to)
        except ValueError:
            address = ""
    if "@" not in address:
        # not chained: aiosmtplib's message quotes the address
        raise PermanentDeliveryError(
            "recipient address cannot be used in an SMTP envelope", reason="invalid_recipient"
        )
    return address
