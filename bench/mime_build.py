"""Building one email: otpd's writer against the stdlib ``EmailMessage(policy=SMTP)`` plus
``as_bytes()`` (what otpd used before), for the same messages in the same run.

Prints microseconds per message for each and the ratio, for a short ASCII OTP email and
for a non-ASCII one with a few KiB of HTML.

    .venv/bin/python bench/mime_build.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from otpd.config import EmailConfig
from otpd.models import Channel, Message
from otpd.providers.mime import build_email, one_line

SENDER = EmailConfig(
    from_address="no-reply@mail.example.org", from_name="Example Co", reply_to="help@example.org"
)
NOW = 1_800_000_000.0


def stdlib_email(message: Message, sender: EmailConfig, now: float) -> bytes:
    """The floor: the message as otpd built it with the stdlib ``email`` package."""
    msg = EmailMessage(policy=SMTP)
    local, _, domain = sender.from_address.rpartition("@")
    msg["From"] = Address(display_name=one_line(sender.from_name), username=local, domain=domain)
    msg["To"] = message.to
    if sender.reply_to:
        msg["Reply-To"] = sender.reply_to
    msg["Subject"] = one_line(message.subject)
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in message.headers:
        msg[one_line(name)] = one_line(value)
    msg.set_content(message.text)
    if message.html:
        msg.add_alternative(message.html, subtype="html")
    return msg.as_bytes()


def otpd_email(message: Message, sender: EmailConfig, now: float) -> bytes:
    return build_email(message, sender, now=now).data


def messages(count: int, *, rich: bool) -> list[Message]:
    out = []
    for i in range(count):
        if rich:
            subject = f"Überprüfung \u2013 代码 {i:06d}"
            text = f"Hallo Zoë,\n\nIhr Code lautet {i:06d}.\n\nGrüße\n" * 3
            html = f"<p>Hallo Zoë, Ihr Code lautet <b>{i:06d}</b>. Grüße</p>\n" * 60
        else:
            subject = "Your sign-in code"
            text = f"Your code is {i:06d}"
            html = f"<p>Your code is <b>{i:06d}</b></p>"
        out.append(
            Message(
                channel=Channel.EMAIL,
                to=f"user{i}@example.com",
                text=text,
                subject=subject,
                html=html,
                tag="otp_code",
                headers=(("X-Entity-Ref-ID", f"task-{i}"),),
            )
        )
    return out


def per_message_us(
    build: Callable[[Message, EmailConfig, float], bytes], batch: list[Message]
) -> float:
    started = time.perf_counter()
    for message in batch:
        build(message, SENDER, NOW)
    return (time.perf_counter() - started) / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.messages} messages each, same run\n")
    print(f"{'message':<34} {'stdlib us/msg':>14} {'otpd us/msg':>12} {'speed-up':>9}")
    for label, rich in (("ASCII OTP, text + HTML", False), ("non-ASCII, 4 KiB HTML", True)):
        batch = messages(args.messages, rich=rich)
        per_message_us(otpd_email, batch[:100])  # warm up both paths
        per_message_us(stdlib_email, batch[:100])
        floor = per_message_us(stdlib_email, batch)
        ours = per_message_us(otpd_email, batch)
        print(f"{label:<34} {floor:>14.1f} {ours:>12.1f} {floor / ours:>8.1f}x")


if __name__ == "__main__":
    main()
