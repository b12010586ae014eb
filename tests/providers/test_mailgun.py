"""Mailgun provider: the exact multipart request, success parsing and error classification."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

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
    multipart_parts,
)
from tests.providers.vendor_specs import SentRequest, recording_vendor

BASE = "https://mailgun.test"
URL = f"{BASE}/v3/mg.example.org/messages"
CONFIG = MailgunConfig(api_key="key-abc", domain="mg.example.org", base_url=BASE)


@pytest.fixture
async def provider(http: SharedSession) -> AsyncIterator[MailgunProvider]:
    async with MailgunProvider(CONFIG, SENDER, http) as p:
        yield p


async def send_expecting_error(provider: MailgunProvider, **reply: Any) -> DeliveryError:
    return await helpers.send_expecting_error(provider, URL, MESSAGE, hidden=(TO, CODE), **reply)


async def sent_form(
    http: SharedSession, sender: EmailConfig, message: Message
) -> tuple[SentRequest, list[tuple[str, str]]]:
    """The one request a provider sent to a real local server, and its form fields in
    order, each part checked to be a plain form-data text field."""
    reply = json.dumps({"id": "<20261122.1@mg.example.org>", "message": "Queued. Thank you."})
    async with recording_vendor(200, reply.encode()) as (base_url, seen):
        config = dataclasses.replace(CONFIG, base_url=base_url)
        async with MailgunProvider(config, sender, http) as provider:
            result = await provider.send(message)
    assert (result.provider, result.message_id) == ("mailgun", "<20261122.1@mg.example.org>")
    [sent] = seen
    fields = []
    for headers, value in multipart_parts(sent.content_type, sent.body):
        [(_, disposition)] = [(k, v) for k, v in headers if k == "Content-Disposition"]
        name = re.fullmatch(r'form-data; name="([^"]+)"', disposition)
        assert name is not None, disposition
        assert headers == [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Disposition", disposition),
        ]
        fields.append((name.group(1), value))
    return sent, fields


def without_message_id(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    [message_id] = [value for name, value in fields if name == "h:Message-Id"]
    assert MSGID.fullmatch(message_id)
    return [(name, value) for name, value in fields if name != "h:Message-Id"]


async def test_posts_the_exact_multipart_form_with_basic_auth_tracking_off_and_auto_submitted(
    http: SharedSession,
) -> None:
    sent, fields = await sent_form(http, SENDER, MESSAGE)

    assert (sent.method, urlsplit(sent.url).path) == ("POST", "/v3/mg.example.org/messages")
    assert sent.headers["Authorization"] == ("Basic " + base64.b64encode(b"api:key-abc").decode())
    # the spec accepts only multipart/form-data on this endpoint
    assert re.fullmatch(r"multipart/form-data; boundary=[0-9a-f]{32}", sent.content_type)
    assert without_message_id(fields) == [
        ("from", "Example Co <no-reply@mail.example.org>"),
        ("to", TO),
        ("subject", "Your sign-in code"),
        ("text", f"Your code is {CODE}"),
        ("html", f"<p>Your code is <b>{CODE}</b></p>"),
        ("h:Reply-To", "help@example.org"),
        ("h:Auto-Submitted", "auto-generated"),
        ("h:X-Entity-Ref-ID", "task-1"),
        ("o:tracking", "no"),
        ("o:tracking-clicks", "no"),
        ("o:tracking-opens", "no"),
    ]


async def test_leaves_out_reply_to_and_html_and_quotes_the_sender_name(
    http: SharedSession,
) -> None:
    sender = EmailConfig(from_address="no-reply@mail.example.org", from_name="Example, Inc.")
    text = "Grüße, plain only\nCode: 493817"
    message = Message(channel=Channel.EMAIL, to=TO, text=text, subject="Hi\nBcc: x")
    _, fields = await sent_form(http, sender, message)

    assert without_message_id(fields) == [
        ("from", '"Example, Inc." <no-reply@mail.example.org>'),
        ("to", TO),
        ("subject", "Hi Bcc: x"),
        ("text", text),
        ("h:Auto-Submitted", "auto-generated"),
        ("o:tracking", "no"),
        ("o:tracking-clicks", "no"),
        ("o:tracking-opens", "no"),
    ]


@pytest.mark.parametrize("name", ["Auto-Submitted", "auto-submitted", "Message-Id", "Reply-To"])
async def test_a_custom_header_cannot_replace_one_otpd_writes(
    provider: MailgunProvider, name: str
) -> None:
    message = dataclasses.replace(MESSAGE, headers=((name, "no"),))
    with aioresponses() as mocked, pytest.raises(PermanentDeliveryError) as caught:
        await provider.send(message)
    assert caught.value.reason == "invalid_message"
    assert not mocked.requests


async def test_region_eu_uses_the_eu_endpoint(http: SharedSession) -> None:
    config = MailgunConfig(api_key="key-abc", domain="mg.example.org", region="eu")
    assert MailgunProvider(config, SENDER, http).base_url == "https://api.eu.mailgun.net"


# Mailgun answers ``{"message": "..."}``; only a message that is about the recipient's
# address, and nothing else, refuses the recipient. Bodies from Mailgun's answers and its
# spec's 400 example.
BAD_TO = "'to' parameter is not a valid address. please check documentation"
RECIPIENT_400 = [
    pytest.param({"message": BAD_TO}, id="to-not-valid"),
    pytest.param({"message": BAD_TO.replace("'to'", "to")}, id="to-not-valid-unquoted"),
    pytest.param({"message": BAD_TO + "."}, id="to-not-valid-period"),
    pytest.param({"message": f"{BAD_TO}, {BAD_TO}"}, id="to-not-valid-twice"),
]
REQUEST_400 = [
    pytest.param({"message": "'from' parameter is missing"}, id="from-missing"),
    pytest.param({"message": "from parameter is missing"}, id="from-missing-unquoted"),
    pytest.param({"message": "to parameter is missing"}, id="to-missing"),
    pytest.param({"message": BAD_TO.replace("'to'", "'from'")}, id="from-not-valid"),
    pytest.param(
        {"message": "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters"},
        id="no-body",
    ),
    pytest.param({"message": "Header name must be pure ASCII: X-Ünï"}, id="bad-header"),
    pytest.param(
        {"message": "Send options (parameters starting with o:, h:, or v:) are limited to 16KB"},
        id="options-too-big",
    ),
    pytest.param({"message": f"{BAD_TO}, 'from' parameter is missing"}, id="to-and-from"),
    pytest.param({"message": f"'from' parameter is missing\n{BAD_TO}"}, id="from-and-to-lines"),
    pytest.param(
        {
            "message": "A simple message describing the issue - A few examples:'to parameter is "
            "not a valid address. please check documentation.' 'Only one parameters 'html' or "
            "'template' is allowed.'"
        },
        id="spec-example-several",
    ),
    pytest.param({"message": f"{BAD_TO} (from: Example Co <x@y>)"}, id="to-plus-text"),
    pytest.param({"error": BAD_TO}, id="no-message-key"),
    pytest.param({"message": [BAD_TO]}, id="message-not-a-string"),
    pytest.param([BAD_TO], id="json-list"),
]


@pytest.mark.parametrize("payload", RECIPIENT_400)
async def test_a_400_only_about_the_to_address_is_a_permanent_invalid_recipient(
    provider: MailgunProvider, payload: Any
) -> None:
    error = await send_expecting_error(provider, status=400, payload=payload)
    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == "invalid_recipient"
    assert not error.blames_provider


@pytest.mark.parametrize("payload", REQUEST_400)
async def test_any_other_400_is_our_request_failing_over_without_blaming_mailgun(
    provider: MailgunProvider, payload: Any
) -> None:
    error = await send_expecting_error(provider, status=400, payload=payload)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"
    assert not error.blames_provider


@pytest.mark.parametrize("body", ["<html>Bad Request</html>", "", BAD_TO])
async def test_a_400_without_a_json_body_is_our_request_too(
    provider: MailgunProvider, body: str
) -> None:
    error = await send_expecting_error(provider, status=400, body=body)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == "provider_rejected"
    assert not error.blames_provider


@pytest.mark.parametrize(
    ("status", "body", "reason", "blames"),
    [
        # a bad key: a bare 401 "Forbidden", not JSON
        (401, "Forbidden", "provider_auth", True),
        (403, '{"message": "Domain mg.example.org is not allowed to send"}', "provider_auth", True),
        (404, '{"message": "Domain not found: mg.example.org"}', "provider_rejected", False),
        (413, "", "provider_rejected", False),
        (429, '{"message": "account-requests-per-sec limit exceeded"}', "throttled", True),
        (500, '{"message": "Internal Server Error"}', "provider_error", True),
        (503, "oops", "provider_error", True),
    ],
)
async def test_other_statuses_are_transient_and_blame_mailgun_only_for_its_health(
    provider: MailgunProvider, status: int, body: str, reason: str, blames: bool
) -> None:
    error = await send_expecting_error(provider, status=status, body=body)
    assert isinstance(error, TransientDeliveryError)
    assert error.reason == reason
    assert error.blames_provider is blames


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
