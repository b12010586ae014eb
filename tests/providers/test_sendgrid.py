"""SendGrid provider: the exact v3 request, success parsing and error classification."""

from __future__ import annotations

import dataclasses
import json
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
from tests.providers.vendor_specs import recording_vendor

BASE = "https://sendgrid.test"
URL = f"{BASE}/v3/mail/send"
# every message turns every tracking setting off: no link is rewritten, no pixel added
TRACKING_OFF = {
    "click_tracking": {"enable": False, "enable_text": False},
    "open_tracking": {"enable": False},
    "subscription_tracking": {"enable": False},
    "ganalytics": {"enable": False},
}


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
        "headers": {"Auto-Submitted": "auto-generated", "X-Entity-Ref-ID": "task-1"},
        "tracking_settings": TRACKING_OFF,
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
    assert MSGID.fullmatch(body["headers"].pop("Message-ID"))
    # header values are single lines: no injected headers through subject or name
    assert body == {
        "personalizations": [{"to": [{"email": TO}]}],
        "from": {"email": "no-reply@mail.example.org", "name": "Example Co"},
        "subject": "Hi Bcc: x",
        "content": [{"type": "text/plain", "value": "plain only"}],
        "headers": {"Auto-Submitted": "auto-generated"},
        "tracking_settings": TRACKING_OFF,
    }


async def test_every_message_is_auto_submitted_with_all_tracking_off_on_the_wire(
    http: SharedSession,
) -> None:
    # what a real server reads from the bytes aiohttp wrote, not the dict handed to it
    async with recording_vendor(202) as (base_url, seen):
        config = SendgridConfig(api_key="SG.k", base_url=base_url)
        async with SendgridProvider(config, SENDER, http) as provider:
            await provider.send(MESSAGE)

    [sent] = seen
    body = json.loads(sent.body)
    assert sent.content_type == "application/json"
    assert body["headers"]["Auto-Submitted"] == "auto-generated"
    assert body["tracking_settings"] == {
        "click_tracking": {"enable": False, "enable_text": False},
        "open_tracking": {"enable": False},
        "subscription_tracking": {"enable": False},
        "ganalytics": {"enable": False},
    }


@pytest.mark.parametrize("name", ["Auto-Submitted", "AUTO-SUBMITTED", "Message-ID", "From"])
async def test_a_custom_header_cannot_replace_one_otpd_writes(
    provider: SendgridProvider, name: str
) -> None:
    message = dataclasses.replace(MESSAGE, headers=((name, "no"),))
    with aioresponses() as mocked, pytest.raises(PermanentDeliveryError) as caught:
        await provider.send(message)
    assert caught.value.reason == "invalid_message"
    assert not mocked.requests


def sendgrid_error(field: str | None, message: str = "Does not contain a valid address.") -> Any:
    help_url = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
    return {"message": message, "field": field, "help": help_url}


TO_EMAIL = "personalizations.0.to.0.email"


@pytest.mark.parametrize(
    "errors",
    [
        pytest.param(
            [sendgrid_error(TO_EMAIL, f"Does not contain a valid address: {TO}")], id="one"
        ),
        pytest.param([sendgrid_error(TO_EMAIL), sendgrid_error(TO_EMAIL)], id="twice"),
    ],
)
async def test_a_400_only_about_the_recipient_address_is_permanent(
    provider: SendgridProvider, errors: list[Any]
) -> None:
    error = await send_expecting_error(provider, status=400, payload={"errors": errors})
    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == "invalid_recipient"
    assert not error.blames_provider


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(
            {"errors": [sendgrid_error("from", "The from email does not match a verified Sender")]},
            id="from-not-verified",
        ),
        pytest.param(
            {"errors": [sendgrid_error("personalizations.0.to", "The to parameter is required")]},
            id="to-missing",
        ),
        pytest.param(
            {"errors": [sendgrid_error("content.0.value", "The content value must be a string")]},
            id="content",
        ),
        pytest.param(
            {
                "errors": [
                    sendgrid_error(TO_EMAIL),
                    sendgrid_error("subject", "The subject is required"),
                ]
            },
            id="to-and-subject",
        ),
        pytest.param({"errors": [sendgrid_error(None, "invalid request")]}, id="no-field"),
        pytest.param({"errors": [sendgrid_error(TO_EMAIL), "oops"]}, id="to-and-junk"),
        pytest.param({"errors": []}, id="no-errors"),
        pytest.param({"message": "bad"}, id="no-errors-key"),
        pytest.param([sendgrid_error(TO_EMAIL)], id="json-list"),
    ],
)
async def test_any_other_400_is_our_request_failing_over_without_blaming_sendgrid(
    provider: SendgridProvider, payload: Any
) -> None:
    error = await send_expecting_error(provider, status=400, payload=payload)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"
    assert not error.blames_provider


@pytest.mark.parametrize("body", ["<html>bad</html>", ""])
async def test_a_400_without_json_is_our_request_too(provider: SendgridProvider, body: str) -> None:
    error = await send_expecting_error(provider, status=400, body=body)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"
    assert not error.blames_provider


@pytest.mark.parametrize(
    ("status", "reason", "blames"),
    [
        (401, "provider_auth", True),
        (403, "provider_auth", True),
        (404, "provider_rejected", False),
        (405, "provider_rejected", False),
        (413, "provider_rejected", False),
        (429, "throttled", True),
        (500, "provider_error", True),
        (502, "provider_error", True),
        (503, "provider_error", True),
    ],
)
async def test_other_statuses_are_transient_and_blame_sendgrid_only_for_its_health(
    provider: SendgridProvider, status: int, reason: str, blames: bool
) -> None:
    payload = {"errors": [sendgrid_error(None, "The provided authorization grant is invalid")]}
    error = await send_expecting_error(provider, status=status, payload=payload)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == reason
    assert error.blames_provider is blames


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
