"""Mailgun provider: the exact form request, success parsing and error classification."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from otpd.config import EmailConfig, MailgunConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message
from otpd.providers.mailgun import MailgunProvider
from otpd.providers.session import SharedSession
from tests.providers import helpers
from tests.providers.helpers import (
    CODE,
    MESSAGE,
    MSGID,
    SENDER,
    TO,
    build_from_config,
    only_call,
    only_request,
)

BASE = "https://mailgun.test"
URL = f"{BASE}/v3/mg.example.org/messages"
CONFIG = MailgunConfig(api_key="key-abc", domain="mg.example.org", base_url=BASE)


@pytest.fixture
async def provider(http: SharedSession) -> AsyncIterator[MailgunProvider]:
    async with MailgunProvider(CONFIG, SENDER, http) as p:
        yield p


async def send_expecting_error(provider: MailgunProvider, **reply: Any) -> DeliveryError:
    return await helpers.send_expecting_error(provider, URL, MESSAGE, hidden=(TO, CODE), **reply)


async def test_posts_the_exact_form_with_basic_auth_and_returns_the_mailgun_id(
    provider: MailgunProvider,
) -> None:
    reply = {"id": "<20261122.1@mg.example.org>", "message": "Queued. Thank you."}
    with aioresponses() as mocked:
        mocked.post(URL, status=200, payload=reply)
        result = await provider.send(MESSAGE)

    assert (result.provider, result.message_id) == ("mailgun", "<20261122.1@mg.example.org>")
    method, url, call = only_request(mocked)
    assert (method, url) == ("POST", URL)
    assert call.kwargs["headers"] == {
        "Authorization": "Basic " + base64.b64encode(b"api:key-abc").decode()
    }
    form = dict(call.kwargs["data"])
    assert MSGID.fullmatch(form.pop("h:Message-Id"))
    assert form == {
        "from": "Example Co <no-reply@mail.example.org>",
        "to": TO,
        "subject": "Your sign-in code",
        "text": f"Your code is {CODE}",
        "html": f"<p>Your code is <b>{CODE}</b></p>",
        "h:Reply-To": "help@example.org",
        "h:X-Entity-Ref-ID": "task-1",
    }


async def test_leaves_out_reply_to_and_html_and_quotes_the_sender_name(
    http: SharedSession,
) -> None:
    sender = EmailConfig(from_address="no-reply@mail.example.org", from_name="Example, Inc.")
    message = Message(channel=Channel.EMAIL, to=TO, text="plain only", subject="Hi\nBcc: x")
    async with MailgunProvider(CONFIG, sender, http) as p:
        with aioresponses() as mocked:
            mocked.post(URL, status=200, payload={"id": "<1@mg>", "message": "Queued."})
            await p.send(message)

    form = only_call(mocked).kwargs["data"]
    assert sorted(form) == ["from", "h:Message-Id", "subject", "text", "to"]
    assert form["from"] == '"Example, Inc." <no-reply@mail.example.org>'
    assert form["subject"] == "Hi Bcc: x"


async def test_region_eu_uses_the_eu_endpoint(http: SharedSession) -> None:
    config = MailgunConfig(api_key="key-abc", domain="mg.example.org", region="eu")
    assert MailgunProvider(config, SENDER, http).base_url == "https://api.eu.mailgun.net"


async def test_invalid_to_address_is_permanent(provider: MailgunProvider) -> None:
    payload = {"message": "'to' parameter is not a valid address. please check documentation"}
    error = await send_expecting_error(provider, status=400, payload=payload)
    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == "invalid_recipient"


async def test_bad_request_about_our_own_fields_is_transient(provider: MailgunProvider) -> None:
    payload = {"message": "from parameter is missing"}
    error = await send_expecting_error(provider, status=400, payload=payload)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"


async def test_wrong_api_key_is_transient_provider_auth(provider: MailgunProvider) -> None:
    # Mailgun answers a bad key with a bare 401 "Forbidden", not JSON
    error = await send_expecting_error(provider, status=401, body="Forbidden")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_auth"


@pytest.mark.parametrize(("status", "reason"), [(403, "provider_auth"), (404, "provider_rejected")])
async def test_refused_account_or_unknown_domain_is_transient(
    provider: MailgunProvider, status: int, reason: str
) -> None:
    payload = {"message": "Domain not found: mg.example.org"}
    error = await send_expecting_error(provider, status=status, payload=payload)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == reason


async def test_throttling_is_transient(provider: MailgunProvider) -> None:
    error = await send_expecting_error(provider, status=429, payload={"message": "Too many"})
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "throttled"


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(provider: MailgunProvider, status: int) -> None:
    error = await send_expecting_error(provider, status=status, body="oops")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_error"


async def test_network_failure_is_transient(provider: MailgunProvider) -> None:
    error = await send_expecting_error(provider, exception=aiohttp.ServerDisconnectedError())
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "network"


async def test_registry_builds_mailgun_from_config(http: SharedSession) -> None:
    data = {
        "email": {"providers": ["mailgun"]},
        "mailgun": {"api_key": "key-abc", "domain": "mg.example.org"},
    }
    [built] = build_from_config(Channel.EMAIL, data, http)
    assert isinstance(built, MailgunProvider)
    assert await built.health() == {
        "base_url": "https://api.mailgun.net",
        "domain": "mg.example.org",
    }
