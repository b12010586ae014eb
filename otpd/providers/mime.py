"""RFC 5322 messages built with the stdlib ``email`` package (never by concatenation)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from otpd.config import EmailConfig
from otpd.models import Message

__all__ = ["build_email", "one_line"]


def one_line(value: str) -> str:
    """Fold CR, LF and other control characters to spaces: header values are one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())


def build_email(message: Message, sender: EmailConfig, *, now: float | None = None) -> EmailMessage:
    """A multipart/alternative email (text, then HTML) with Message-ID, Date and From."""
    msg = EmailMessage(policy=SMTP)
    local, _, domain = sender.from_address.rpartition("@")
    msg["From"] = Address(display_name=one_line(sender.from_name), username=local, domain=domain)
    msg["To"] = message.to
    if sender.reply_to:
        msg["Reply-To"] = sender.reply_to
    msg["Subject"] = one_line(message.subject)
    when = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = make_msgid(domain=domain)
    for name, value in message.headers:
        msg[one_line(name)] = one_line(value)
    msg.set_content(message.text)
    if message.html:
        msg.add_alternative(message.html, subtype="html")
    return msg
