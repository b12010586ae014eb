"""What the provider tests share: the one request aioresponses saw and a send that must
fail without leaking personal data (the REST providers), and building providers from
config through the registry (all of them)."""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    "MESSAGE",
    "MSGID",
    "SENDER",
    "TO",
    "build_from_config",
    "only_call",
    "only_request",
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
