"""What the provider tests share: the one request aioresponses saw and a send that must
fail without leaking personal data (the REST providers), and building providers from
config through the registry (all of them)."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest
from aioresponses import aioresponses

from otpd.clock import Clock, FakeClock
from otpd.config import EmailConfig, load_config
from otpd.errors import DeliveryError
from otpd.models import Channel, Message
from otpd.providers.base import Provider
from otpd.providers.registry import ProviderDeps, build_providers
from otpd.providers.session import SharedSession

__all__ = [
    "CODE",
    "HOSTILE",
    "MESSAGE",
    "MSGID",
    "SENDER",
    "TO",
    "assert_hostile_email_arrived_as_text",
    "build_from_config",
    "display_name",
    "hostile_message",
    "hostile_sender",
    "multipart_parts",
    "only_call",
    "only_request",
    "parse_email",
    "send_expecting_error",
]


# The email the email providers' tests send, from a sender with every header set.
TO = "jane.doe@example.com"
CODE = "493817"
SENDER = EmailConfig(
    from_address="no-reply@mail.example.org", from_name="Example Co", reply_to="help@example.org"
)
MESSAGE = Message(
    channel=Channel.EMAIL,
    to=TO,
    text=f"Your code is {CODE}",
    subject="Your sign-in code",
    html=f"<p>Your code is <b>{CODE}</b></p>",
    tag="otp_code",
    headers=(("X-Entity-Ref-ID", "task-1"),),
)
MSGID = re.compile(r"<[^<>@\s]+@mail\.example\.org>")

# An RFC 2047 encoded word that decodes to "Hello", CRLF, "Bcc: spam@evil.example": a
# writer that decodes encoded words turns it into a real Bcc header.
HOSTILE = "=?utf-8?q?Hello=0D=0ABcc=3A_spam=40evil.example?="


def hostile_sender() -> EmailConfig:
    """The test sender whose display name carries :data:`HOSTILE` (and no Reply-To)."""
    return EmailConfig(from_address=SENDER.from_address, from_name=f"Acme {HOSTILE}")


def hostile_message(*, html: bool) -> Message:
    """:data:`MESSAGE` with :data:`HOSTILE` in the subject and a custom header; with or
    without an HTML part (the two MIME layouts)."""
    return Message(
        channel=Channel.EMAIL,
        to=TO,
        text=MESSAGE.text,
        subject=HOSTILE,
        html=MESSAGE.html if html else "",
        tag="otp_code",
        headers=(("X-Campaign", f"spring {HOSTILE}"),),
    )


def parse_email(raw: bytes) -> EmailMessage:
    """``raw`` parsed by the stdlib with ``policy.default``, which decodes encoded words."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def display_name(msg: EmailMessage) -> str:
    """The From display name as RFC 2047 6.2 reads it. ``policy.default`` keeps the white
    space between two adjacent encoded words of a phrase, which the RFC says to ignore,
    so a name too long for one encoded word (45 bytes) is decoded from the raw value."""
    raw = dict(msg.raw_items())["From"]
    if "=?" not in raw:
        name: str = msg["From"].addresses[0].display_name
        return name
    decoded = str(make_header(decode_header(raw)))
    return decoded.rpartition(" <")[0]


def assert_hostile_email_arrived_as_text(raw: bytes, *, html: bool) -> EmailMessage:
    """``raw``, a :func:`hostile_message` from :func:`hostile_sender` as a provider
    delivered it, has exactly otpd's headers, each hostile value as literal text, and is
    7-bit on the wire."""
    assert all(byte < 128 for byte in raw)
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    for name in (b"Bcc", b"Cc", b"Reply-To"):
        assert b"\n" + name + b":" not in header_block
    msg = parse_email(raw)
    content = ["Content-Type"] if html else ["Content-Type", "Content-Transfer-Encoding"]
    assert list(msg.keys()) == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Auto-Submitted",
        "X-Campaign",
        *content,
    ]
    assert msg["Bcc"] is None
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Subject"] == HOSTILE
    assert msg["X-Campaign"] == f"spring {HOSTILE}"
    assert msg["To"] == TO
    [sender] = msg["From"].addresses
    assert sender.addr_spec == SENDER.from_address
    assert display_name(msg) == f"Acme {HOSTILE}"
    assert msg.get_content_type() == ("multipart/alternative" if html else "text/plain")
    text = msg.get_body(("plain",))
    assert isinstance(text, EmailMessage)
    assert text.get_content() == MESSAGE.text
    if html:
        part = msg.get_body(("html",))
        assert isinstance(part, EmailMessage)
        assert part.get_content() == MESSAGE.html
    return msg


def multipart_parts(content_type: str, body: bytes) -> list[tuple[list[tuple[str, str]], str]]:
    """Each part of a ``multipart/form-data`` body as (its headers, its text), read by the
    stdlib's parser rather than by aiohttp, which wrote it."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    msg = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/form-data"
    assert not msg.defects
    parts = []
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append(([(k, str(v)) for k, v in part.raw_items()], payload.decode("utf-8")))
    return parts


def only_request(mocked: aioresponses) -> tuple[str, str, Any]:
    """Method, URL and call of the one request ``mocked`` intercepted."""
    calls = [(m, str(u), c) for (m, u), cs in mocked.requests.items() for c in cs]
    assert len(calls) == 1
    return calls[0]


def only_call(mocked: aioresponses) -> Any:
    """The call (``.kwargs`` holds what the provider passed aiohttp) of the one request."""
    return only_request(mocked)[2]


async def send_expecting_error(
    provider: Provider,
    url: str | re.Pattern[str],
    message: Message,
    *,
    hidden: Iterable[str],
    **reply: Any,
) -> DeliveryError:
    """Send ``message`` while ``url`` answers with ``reply``; the error it must raise.

    None of ``hidden`` (the recipient, the code) may show in the error: it reaches logs,
    health output and task records.
    """
    with aioresponses() as mocked:
        mocked.post(url, **reply)
        with pytest.raises(DeliveryError) as caught:
            await provider.send(message)
    error = caught.value
    for text in (str(error), error.reason, repr(error.details)):
        for value in hidden:
            assert value not in text
    assert error.provider == provider.name
    return error


def build_from_config(
    channel: Channel,
    data: dict[str, Any],
    http: SharedSession | None = None,
    clock: Clock | None = None,
) -> list[Provider]:
    """The ``channel`` providers the registry builds from the TOML-shaped ``data``; the
    session need not be open, as providers read it only when sending."""
    config = load_config(data=data, env={})
    deps = ProviderDeps(http=http or SharedSession(), clock=clock or FakeClock())
    return build_providers(channel, config, deps)
