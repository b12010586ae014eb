"""Vonage provider: the exact SMS API form, per-message statuses and their classification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from otpd.config import VonageConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message
from otpd.providers.session import SharedSession
from otpd.providers.vonage import VonageProvider, is_gsm7
from tests.providers import helpers
from tests.providers.helpers import build_from_config, only_call, only_request

BASE = "https://vonage.test"
URL = f"{BASE}/sms/json"
TO = "+14155550123"
CODE = "493817"
CONFIG = VonageConfig(api_key="k1", api_secret="s3cret", from_="Example", base_url=BASE)
MESSAGE = Message(channel=Channel.SMS, to=TO, text=f"Your code is {CODE}", tag="otp_code")


@pytest.fixture
async def provider(http: SharedSession) -> AsyncIterator[VonageProvider]:
    async with VonageProvider(CONFIG, http) as p:
        yield p


def answer(*statuses: str) -> dict[str, Any]:
    parts = []
    for i, status in enumerate(statuses):
        part = {"to": TO.lstrip("+"), "status": status}
        if status == "0":
            part["message-id"] = f"0C00000021{i}"
        else:
            part["error-text"] = f"Rejected {TO.lstrip('+')}"
        parts.append(part)
    return {"message-count": str(len(parts)), "messages": parts}


async def send_expecting_error(provider: VonageProvider, **reply: Any) -> DeliveryError:
    hidden = (TO.lstrip("+"), CODE)
    return await helpers.send_expecting_error(provider, URL, MESSAGE, hidden=hidden, **reply)


async def test_posts_the_exact_form_without_the_plus_and_returns_the_message_id(
    provider: VonageProvider,
) -> None:
    with aioresponses() as mocked:
        mocked.post(URL, status=200, payload=answer("0"))
        result = await provider.send(MESSAGE)

    assert (result.provider, result.message_id) == ("vonage", "0C000000210")
    method, url, call = only_request(mocked)
    assert (method, url) == ("POST", URL)
    assert call.kwargs["data"] == {
        "api_key": "k1",
        "api_secret": "s3cret",
        "from": "Example",
        "to": "14155550123",
        "text": f"Your code is {CODE}",
    }


@pytest.mark.parametrize("text", ["Код: 493817", "Your code 493817 ✅", "验证码 493817", "`code`"])
async def test_text_outside_gsm7_is_sent_as_unicode(provider: VonageProvider, text: str) -> None:
    message = Message(channel=Channel.SMS, to=TO, text=text)
    with aioresponses() as mocked:
        mocked.post(URL, status=200, payload=answer("0"))
        await provider.send(message)
    assert only_call(mocked).kwargs["data"]["type"] == "unicode"


@pytest.mark.parametrize("text", ["Votre code: 493817 é à ü", "Preis: 5€ [ok] {x} ~ ^ | \\"])
def test_gsm7_text_including_the_extension_table_stays_plain(text: str) -> None:
    assert is_gsm7(text)


async def test_a_multipart_message_is_named_by_its_first_part(provider: VonageProvider) -> None:
    with aioresponses() as mocked:
        mocked.post(URL, status=200, payload=answer("0", "0"))
        result = await provider.send(MESSAGE)
    assert result.message_id == "0C000000210"


async def test_a_failed_later_part_fails_the_send(provider: VonageProvider) -> None:
    error = await send_expecting_error(provider, status=200, payload=answer("0", "5"))
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_error"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("6", "unroutable"),
        ("7", "recipient_barred"),
        ("12", "message_too_long"),
        ("33", "recipient_deactivated"),
    ],
)
async def test_recipient_and_message_statuses_are_permanent(
    provider: VonageProvider, status: str, reason: str
) -> None:
    error = await send_expecting_error(provider, status=200, payload=answer(status))
    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == reason
    assert f"status {status}" in error.message
    assert not error.blames_provider


@pytest.mark.parametrize(
    ("status", "reason", "blames"),
    [
        ("1", "throttled", True),
        ("10", "throttled", True),
        # our request or sender: refused, but nothing about Vonage's health
        ("2", "provider_rejected", False),
        ("3", "provider_rejected", False),
        ("15", "provider_rejected", False),
        ("99", "provider_rejected", False),
        ("4", "provider_auth", True),
        ("14", "provider_auth", True),
        ("5", "provider_error", True),
        ("8", "provider_account", True),
        ("11", "provider_account", True),
        ("29", "provider_account", True),
        ("9", "provider_quota", True),
    ],
)
async def test_account_credential_and_request_statuses_are_transient(
    provider: VonageProvider, status: str, reason: str, blames: bool
) -> None:
    error = await send_expecting_error(provider, status=200, payload=answer(status))
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == reason
    assert error.blames_provider is blames


async def test_a_status_that_is_not_a_number_is_not_echoed(provider: VonageProvider) -> None:
    error = await send_expecting_error(provider, status=200, payload=answer(TO))
    assert isinstance(error, TransientDeliveryError)
    assert "status unknown" in error.message


@pytest.mark.parametrize(
    ("status", "reason", "blames"),
    [
        (400, "provider_rejected", False),
        (401, "provider_auth", True),
        (403, "provider_auth", True),
        (404, "provider_rejected", False),
        (429, "throttled", True),
        (500, "provider_error", True),
        (502, "provider_error", True),
    ],
)
async def test_http_errors_are_transient(
    provider: VonageProvider, status: int, reason: str, blames: bool
) -> None:
    error = await send_expecting_error(provider, status=status, body="nope")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == reason
    assert error.blames_provider is blames


@pytest.mark.parametrize("payload", [{}, {"messages": []}, {"messages": ["0"]}])
async def test_an_answer_without_statuses_is_transient(
    provider: VonageProvider, payload: dict[str, Any]
) -> None:
    error = await send_expecting_error(provider, status=200, payload=payload)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_error"


async def test_network_failure_is_transient(provider: VonageProvider) -> None:
    error = await send_expecting_error(provider, exception=aiohttp.ServerDisconnectedError())
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "network"


async def test_registry_builds_vonage_with_the_from_key(http: SharedSession) -> None:
    data = {
        "sms": {"providers": ["vonage"]},
        "vonage": {"api_key": "k1", "api_secret": "s3cret", "from": "Example"},
    }
    [built] = build_from_config(Channel.SMS, data, http)
    assert isinstance(built, VonageProvider)
    assert built.form(MESSAGE)["from"] == "Example"
    assert await built.health() == {"base_url": "https://rest.nexmo.com"}
