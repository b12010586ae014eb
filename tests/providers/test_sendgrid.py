"""SendGrid provider: the exact v3 request, success parsing and error classification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses

from otpd.config import EmailConfig, SendgridConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message
from otpd.providers.sendgrid import SendgridProvider
from otpd.providers.session import SharedSession
from tests.conftest import free_port
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

BASE = "https://sendgrid.test"
URL = f"{BASE}/v3/mail/send"


@pytest.fixture
async def provider(http: SharedSession) -> AsyncIterator[SendgridProvider]:
    async with SendgridProvider(SendgridConfig(api_key="SG.k", base_url=BASE), SENDER, http) as p:
        yield p


async def send_expecting_error(provider: SendgridProvider, **reply: Any) -> DeliveryError:
    return await helpers.send_expecting_error(provider, URL, MESSAGE, hidden=(TO, CODE), **reply)


async def test_posts_the_exact_v3_body_with_bearer_key_and_returns_x_message_id(
    provider: SendgridProvider,
) -> None:
    with aioresponses() as mocked:
        mocked.post(URL, status=202, headers={"X-Message-Id": "sg-abc123"})
        result = await provider.send(MESSAGE)

    assert (result.provider, result.message_id) == ("sendgrid", "sg-abc123")
    method, url, call = only_request(mocked)
    assert (method, url) == ("POST", URL)
    assert call.kwargs["headers"] == {"Authorization": "Bearer SG.k"}
    body = call.kwargs["json"]
    message_id = body["headers"].pop("Message-ID")
    assert MSGID.fullmatch(message_id)
    assert body == {
        "personalizations": [{"to": [{"email": TO}]}],
        "from": {"email": "no-reply@mail.example.org", "name": "Example Co"},
        "reply_to": {"email": "help@example.org"},
        "subject": "Your sign-in code",
        "content": [
            {"type": "text/plain", "value": f"Your code is {CODE}"},
            {"type": "text/html", "value": f"<p>Your code is <b>{CODE}</b></p>"},
        ],
        "headers": {"X-Entity-Ref-ID": "task-1"},
    }


async def test_leaves_out_reply_to_and_html_when_there_are_none(http: SharedSession) -> None:
    sender = EmailConfig(from_address="no-reply@mail.example.org", from_name="Example\nCo")
    message = Message(channel=Channel.EMAIL, to=TO, text="plain only", subject="Hi\r\nBcc: x")
    async with SendgridProvider(SendgridConfig(api_key="SG.k", base_url=BASE), sender, http) as p:
        with aioresponses() as mocked:
            mocked.post(URL, status=202)
            result = await p.send(message)

    assert result.message_id == ""
    body = only_call(mocked).kwargs["json"]
    assert "reply_to" not in body
    assert body["content"] == [{"type": "text/plain", "value": "plain only"}]
    # header values are single lines: no injected headers through subject or name
    assert body["subject"] == "Hi Bcc: x"
    assert body["from"]["name"] == "Example Co"
    assert list(body["headers"]) == ["Message-ID"]


async def test_refused_recipient_address_is_permanent(provider: SendgridProvider) -> None:
    errors = {
        "errors": [
            {
                "message": f"Does not contain a valid address: {TO}",
                "field": "personalizations.0.to.0.email",
                "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html",
            }
        ]
    }
    error = await send_expecting_error(provider, status=400, payload=errors)
    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == "invalid_recipient"


async def test_bad_request_about_our_own_fields_is_transient(provider: SendgridProvider) -> None:
    errors = {"errors": [{"message": "The from email does not match a verified Sender Identity"}]}
    errors["errors"][0]["field"] = "from"
    error = await send_expecting_error(provider, status=400, payload=errors)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"


async def test_bad_request_without_json_is_transient(provider: SendgridProvider) -> None:
    error = await send_expecting_error(provider, status=400, body="<html>bad</html>")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_transient_provider_auth(
    provider: SendgridProvider, status: int
) -> None:
    payload = {
        "errors": [{"field": None, "message": "The provided authorization grant is invalid"}]
    }
    error = await send_expecting_error(provider, status=status, payload=payload)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_auth"


@pytest.mark.parametrize("status", [404, 413])
async def test_other_client_errors_are_transient_provider_rejected(
    provider: SendgridProvider, status: int
) -> None:
    error = await send_expecting_error(provider, status=status, payload={"errors": []})
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"


async def test_throttling_is_transient(provider: SendgridProvider) -> None:
    error = await send_expecting_error(provider, status=429, payload={"errors": []})
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "throttled"


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(provider: SendgridProvider, status: int) -> None:
    error = await send_expecting_error(provider, status=status, body="oops")
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_error"


@pytest.mark.parametrize(
    ("exception", "reason"),
    [
        (aiohttp.ServerDisconnectedError(), "network"),
        (aiohttp.ClientConnectionResetError("reset"), "network"),
        (aiohttp.ConnectionTimeoutError(), "timeout"),
        (TimeoutError(), "timeout"),
    ],
)
async def test_network_failures_and_timeouts_are_transient(
    provider: SendgridProvider, exception: Exception, reason: str
) -> None:
    error = await send_expecting_error(provider, exception=exception)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == reason


async def test_health_shows_the_base_url_only(provider: SendgridProvider) -> None:
    assert await provider.health() == {"base_url": BASE}


async def test_registry_builds_sendgrid_from_config(http: SharedSession) -> None:
    data = {
        "email": {"providers": ["sendgrid", "outbox"]},
        "sendgrid": {"api_key": "SG.k", "base_url": BASE + "/"},
    }
    built = build_from_config(Channel.EMAIL, data, http)
    assert [p.name for p in built] == ["sendgrid", "outbox"]
    assert isinstance(built[0], SendgridProvider)
    assert built[0].base_url == BASE


async def test_delivers_through_a_real_local_http_server(http: SharedSession) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def mail_send(request: web.Request) -> web.Response:
        seen.append((request.headers["Authorization"], await request.json()))
        return web.Response(status=202, headers={"X-Message-Id": "local-42"})

    app = web.Application()
    app.router.add_post("/v3/mail/send", mail_send)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base_url = str(server.make_url("")).rstrip("/")
        config = SendgridConfig(api_key="SG.local", base_url=base_url)
        async with SendgridProvider(config, SENDER, http) as provider:
            result = await provider.send(MESSAGE)
    finally:
        await server.close()

    assert result.message_id == "local-42"
    [(authorization, body)] = seen
    assert authorization == "Bearer SG.local"
    assert body["personalizations"] == [{"to": [{"email": TO}]}]
    assert body["content"][0] == {"type": "text/plain", "value": f"Your code is {CODE}"}


async def test_refused_connection_on_the_real_path_is_transient_network(
    http: SharedSession,
) -> None:
    config = SendgridConfig(api_key="SG.k", base_url=f"http://127.0.0.1:{free_port()}")
    async with SendgridProvider(config, SENDER, http) as provider:
        with pytest.raises(TransientDeliveryError) as caught:
            await provider.send(MESSAGE)
    assert caught.value.reason == "network"
    assert TO not in str(caught.value)
