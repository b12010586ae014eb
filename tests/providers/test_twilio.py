"""Twilio provider: the SDK's request over the shared session to ``twilio.base_url`` (a real
local server stands in for Twilio), and error classification."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from otpd.config import TwilioConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message
from otpd.providers.session import SharedSession
from otpd.providers.twilio import TwilioProvider
from tests.providers import helpers
from tests.providers.helpers import build_from_config, only_request
from tests.providers.twilio_server import MESSAGES_PATH, FakeTwilio

SID = "AC" + "0123456789abcdef" * 2
API = re.compile(r"^https://api\.twilio\.com/2010-04-01/Accounts/AC[0-9a-f]{32}/Messages\.json$")
TO = "+14155550123"
CODE = "493817"
CONFIG = TwilioConfig(account_sid=SID, auth_token="tok", from_number="+14155550100")
MESSAGE = Message(channel=Channel.SMS, to=TO, text=f"Your code is {CODE}", tag="otp_code")
CREATED = {"sid": "SM" + "f" * 32, "status": "queued", "to": TO, "account_sid": SID}


@pytest.fixture
async def provider(http: SharedSession) -> AsyncIterator[TwilioProvider]:
    async with TwilioProvider(CONFIG, http) as p:
        yield p


def twilio_error(code: int, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": f"The 'To' number {TO} is not a valid phone number.",
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


async def send_expecting_error(provider: TwilioProvider, **reply: Any) -> DeliveryError:
    # Twilio's own messages quote the number: none of it may reach our error
    hidden = (TO.lstrip("+"), CODE)
    return await helpers.send_expecting_error(provider, API, MESSAGE, hidden=hidden, **reply)


async def test_creates_a_message_with_the_exact_form_and_returns_its_sid(
    provider: TwilioProvider,
) -> None:
    with aioresponses() as mocked:
        mocked.post(API, status=201, payload=CREATED)
        result = await provider.send(MESSAGE)

    assert (result.provider, result.message_id) == ("twilio", "SM" + "f" * 32)
    method, url, call = only_request(mocked)
    assert (method, url) == (
        "POST",
        f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json",
    )
    assert call.kwargs["data"] == {"To": TO, "From": "+14155550100", "Body": f"Your code is {CODE}"}
    # a header, not aiohttp's deprecated auth=BasicAuth(...) the SDK itself would pass
    assert call.kwargs["auth"] is None
    assert call.kwargs["headers"]["Authorization"] == "Basic " + base64.b64encode(
        f"{SID}:tok".encode()
    ).decode("ascii")
    assert call.kwargs["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_uses_the_messaging_service_and_status_callback_when_configured(
    http: SharedSession,
) -> None:
    config = TwilioConfig(
        account_sid=SID,
        auth_token="tok",
        messaging_service_sid="MG" + "1" * 32,
        status_callback="https://otpd.example.org/twilio/status",
    )
    async with TwilioProvider(config, http) as provider:
        with aioresponses() as mocked:
            mocked.post(API, status=201, payload=CREATED)
            await provider.send(MESSAGE)

    _, _, call = only_request(mocked)
    assert call.kwargs["data"] == {
        "To": TO,
        "MessagingServiceSid": "MG" + "1" * 32,
        "Body": f"Your code is {CODE}",
        "StatusCallback": "https://otpd.example.org/twilio/status",
    }


async def test_requests_go_through_the_shared_session_which_aclose_leaves_open(
    http: SharedSession,
) -> None:
    provider = TwilioProvider(CONFIG, http)
    async with provider:
        transport = provider._transport
        assert transport is not None
        # no session of its own (default connector, unknown resolver), no retry wrapper
        assert transport.session is None
        with aioresponses() as mocked:
            mocked.post(API, status=201, payload=CREATED)
            await provider.send(MESSAGE)
        assert transport.session is http.session
    assert transport.session is None
    assert not http.session.closed


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (21211, "invalid_recipient"),
        (21610, "recipient_unsubscribed"),
        (21614, "recipient_not_mobile"),
    ],
)
async def test_recipient_error_codes_are_permanent(
    provider: TwilioProvider, code: int, reason: str
) -> None:
    error = await send_expecting_error(provider, status=400, payload=twilio_error(code, 400))
    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == reason
    assert str(code) in error.message


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        (20003, 401, "provider_auth"),
        (20429, 429, "throttled"),
        (21408, 400, "region_not_enabled"),
        (21612, 400, "route_unavailable"),
    ],
)
async def test_account_and_route_error_codes_are_transient(
    provider: TwilioProvider, code: int, status: int, reason: str
) -> None:
    error = await send_expecting_error(provider, status=status, payload=twilio_error(code, status))
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == reason


async def test_unknown_error_code_falls_back_to_the_http_status(provider: TwilioProvider) -> None:
    error = await send_expecting_error(provider, status=400, payload=twilio_error(21606, 400))
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"
    assert "21606" in error.message


@pytest.mark.parametrize(
    ("code", "status", "blames"),
    [
        (21211, 400, False),
        (21610, 400, False),
        (21614, 400, False),
        (20003, 401, True),
        (20429, 429, True),
        # a region or route closed to this destination says nothing of other messages
        (21408, 400, False),
        (21612, 400, False),
        # unknown codes: as their status says (a 400 or 404 is our request)
        (21606, 400, False),
        (20404, 404, False),
        (20500, 500, True),
    ],
)
async def test_only_errors_about_twilios_health_count_against_its_circuit(
    provider: TwilioProvider, code: int, status: int, blames: bool
) -> None:
    error = await send_expecting_error(provider, status=status, payload=twilio_error(code, status))
    assert error.blames_provider is blames


@pytest.mark.parametrize("status", [401, 403])
async def test_plain_auth_refusals_without_a_twilio_body_are_provider_auth(
    provider: TwilioProvider, status: int
) -> None:
    error = await send_expecting_error(provider, status=status, body="Unauthorized")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_auth"
    assert error.blames_provider


async def test_plain_429_without_a_twilio_body_is_throttled(provider: TwilioProvider) -> None:
    error = await send_expecting_error(provider, status=429, body="Too Many Requests")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "throttled"


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(provider: TwilioProvider, status: int) -> None:
    error = await send_expecting_error(provider, status=status, body="<html>down</html>")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_error"


async def test_rfc9457_service_errors_are_classified_by_code(provider: TwilioProvider) -> None:
    problem = {
        "type": "https://www.twilio.com/docs/errors/21610",
        "title": "Attempt to send to unsubscribed recipient",
        "status": 400,
        "code": 21610,
        "detail": f"{TO} replied STOP",
    }
    error = await send_expecting_error(provider, status=400, payload=problem)
    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == "recipient_unsubscribed"


async def test_network_failure_is_transient(provider: TwilioProvider) -> None:
    error = await send_expecting_error(provider, exception=aiohttp.ServerDisconnectedError())
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "network"


async def test_a_hanging_request_times_out_as_transient(http: SharedSession) -> None:
    # The SDK sends timeout=None per request, which aiohttp takes as "no timeout at all".
    async def hang(url: Any, **kwargs: Any) -> CallbackResult:
        await asyncio.sleep(5)
        return CallbackResult(status=201, payload=CREATED)  # pragma: no cover

    async with TwilioProvider(CONFIG, http, timeout=0.05) as provider:
        error = await send_expecting_error(provider, callback=hang)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "timeout"


async def test_registry_builds_twilio_from_config(http: SharedSession) -> None:
    data = {
        "sms": {"providers": ["twilio", "console"]},
        "twilio": {"account_sid": SID, "auth_token": "tok", "from_number": "+14155550100"},
    }
    built = build_from_config(Channel.SMS, data, http)
    assert [p.name for p in built] == ["twilio", "console"]
    assert await built[0].health() == {"base_url": "https://api.twilio.com", "open": False}


# ---------------------------------------------------------------- twilio.base_url, for real


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def aimed_at(url: str, **overrides: str) -> TwilioConfig:
    values = {"account_sid": SID, "auth_token": "tok", "from_number": "+14155550100"}
    return TwilioConfig(**{**values, **overrides}, base_url=url)


async def test_messages_post_goes_to_the_configured_base_url(
    http: SharedSession, fake_twilio: FakeTwilio
) -> None:
    async with TwilioProvider(aimed_at(fake_twilio.url + "/"), http) as provider:
        result = await provider.send(MESSAGE)
        assert await provider.health() == {"base_url": fake_twilio.url, "open": True}

    assert (result.provider, result.message_id) == ("twilio", "SM" + "f" * 32)
    [seen] = fake_twilio.seen
    assert (seen.method, seen.path) == ("POST", MESSAGES_PATH.format(sid=SID))
    assert seen.host == f"127.0.0.1:{fake_twilio.port}"
    assert seen.content_type == "application/x-www-form-urlencoded"
    assert seen.form == {"To": TO, "From": "+14155550100", "Body": f"Your code is {CODE}"}
    assert seen.authorization == "Basic " + base64.b64encode(f"{SID}:tok".encode()).decode()


async def test_a_base_url_with_a_path_reaches_a_recording_proxy_under_that_path(
    http: SharedSession, fake_twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the SDK would splice these into the host name ("127.0.0.1:port" -> nonsense)
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    async with TwilioProvider(aimed_at(fake_twilio.url + "/record/twilio"), http) as provider:
        await provider.send(MESSAGE)
    [seen] = fake_twilio.seen
    assert seen.path == "/record/twilio" + MESSAGES_PATH.format(sid=SID)


@pytest.mark.parametrize(
    ("status", "answer", "kind", "reason"),
    [
        (400, {"payload": twilio_error(21211, 400)}, PermanentDeliveryError, "invalid_recipient"),
        (401, {"payload": twilio_error(20003, 401)}, TransientDeliveryError, "provider_auth"),
        (429, {"body": "Too Many Requests"}, TransientDeliveryError, "throttled"),
        (503, {"body": "<html>down</html>"}, TransientDeliveryError, "provider_error"),
    ],
)
async def test_error_answers_of_the_configured_base_url_are_classified(
    http: SharedSession,
    fake_twilio: FakeTwilio,
    status: int,
    answer: dict[str, Any],
    kind: type[DeliveryError],
    reason: str,
) -> None:
    fake_twilio.answer(status, **answer)
    async with TwilioProvider(aimed_at(fake_twilio.url), http) as provider:
        with pytest.raises(DeliveryError) as caught:
            await provider.send(MESSAGE)
    error = caught.value
    assert type(error) is kind
    assert error.reason == reason
    assert TO.lstrip("+") not in str(error)
    assert len(fake_twilio.seen) == 1  # no retry inside the SDK


async def test_the_default_base_url_is_twilios_api(http: SharedSession) -> None:
    assert TwilioConfig().base_url == "https://api.twilio.com"
    async with TwilioProvider(CONFIG, http) as provider:
        with aioresponses() as mocked:
            mocked.post(API, status=201, payload=CREATED)
            await provider.send(MESSAGE)
    _, url, _ = only_request(mocked)
    assert url.startswith("https://api.twilio.com/2010-04-01/")
