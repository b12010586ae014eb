"""``POST /webhooks/ses`` end to end: SNS messages signed with a certificate a real https
server serves move the SES task they name, suppress bounced addresses, and a forged one
is refused and changes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestClient

from otpd.app import Otpd
from otpd.clock import FakeClock
from tests.api.test_webhooks import sent_task, task
from tests.conftest import ConfigFactory, open_client
from tests.webhooks.sns_fake import (
    CERT_PATTERN,
    OTHER_KEY,
    SES_ID,
    SUBSCRIBE_PATTERN,
    TOPIC,
    SnsServer,
    body,
    confirmation,
    notification,
    serve_sns,
    ses,
    sign,
)

TASK = "tsk_5e55e55e55e55e55e55e55e5"
BOUNCE = {
    "bounceType": "Permanent",
    "bounceSubType": "General",
    "bouncedRecipients": [
        {"emailAddress": "gone@example.com", "status": "5.1.1", "diagnosticCode": "550 5.1.1"}
    ],
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def sns_server(ca: trustme.CA) -> AsyncIterator[SnsServer]:
    async with serve_sns(ca) as server:
        yield server


@pytest.fixture
async def otpd(
    make_config: ConfigFactory, backend: str, clock: FakeClock, ca: trustme.CA, tmp_path: Path
) -> AsyncIterator[Otpd]:
    ca_file = tmp_path / "sns-ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    config = make_config(
        backend,
        webhooks={
            "sns_topic_arns": [TOPIC],
            "sns_cert_url_pattern": CERT_PATTERN,
            "sns_subscribe_url_pattern": SUBSCRIBE_PATTERN,
            "sns_ca_file": str(ca_file),
        },
    )
    async with Otpd(config, clock=clock) as daemon:
        yield daemon


@pytest.fixture
async def client(otpd: Otpd) -> AsyncIterator[TestClient[Any, Any]]:
    c = await open_client(otpd)
    try:
        yield c
    finally:
        await c.close()


async def post(client: TestClient[Any, Any], message: dict[str, Any]) -> tuple[int, Any]:
    headers, raw = body(message)
    resp = await client.post("/webhooks/ses", data=raw, headers=headers)
    return resp.status, await resp.json()


async def test_an_ses_delivery_marks_the_sent_task_delivered(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock, sns_server: SnsServer
) -> None:
    await sent_task(otpd, TASK, "ses", SES_ID)
    message = sign(notification(ses("Delivery", {}), clock.time()), sns_server)
    assert await post(client, message) == (200, {"accepted": 1})
    assert (await task(client, TASK))["status"] == "delivered"


async def test_a_permanent_ses_bounce_bounces_the_task_and_suppresses_the_address(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock, sns_server: SnsServer
) -> None:
    await sent_task(otpd, TASK, "ses", SES_ID)
    message = sign(notification(ses("Bounce", BOUNCE), clock.time()), sns_server)
    assert await post(client, message) == (200, {"accepted": 1})
    record = await task(client, TASK)
    assert (record["status"], record["reason"]) == ("bounced", "Permanent/General 5.1.1")
    listed = await client.get("/v1/suppressions", params={"address": "gone@example.com"})
    suppression = await listed.json()
    assert suppression["suppressed"] is True
    assert suppression["reason"].startswith("bounce: ses Permanent/General")
    otp = {"user_id": "u-ses", "channel": "email", "email": "gone@example.com"}
    refused = await client.post("/v1/otp", json=otp)
    assert refused.status == 422
    assert (await refused.json())["error"]["code"] == "recipient_suppressed"


async def test_a_forged_ses_bounce_is_refused_and_changes_nothing(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock, sns_server: SnsServer
) -> None:
    await sent_task(otpd, TASK, "ses", SES_ID)
    message = sign(notification(ses("Bounce", BOUNCE), clock.time()), sns_server, key=OTHER_KEY)
    status, answer = await post(client, message)
    assert (status, answer["error"]["code"]) == (401, "invalid_signature")
    assert (await task(client, TASK))["status"] == "sent"
    listed = await client.get("/v1/suppressions", params={"address": "gone@example.com"})
    assert (await listed.json())["suppressed"] is False


async def test_a_subscription_confirmation_is_confirmed_through_the_route(
    client: TestClient[Any, Any], clock: FakeClock, sns_server: SnsServer
) -> None:
    message = sign(confirmation(sns_server, clock.time()), sns_server)
    assert await post(client, message) == (200, {"accepted": 0})
    assert sns_server.count("/?Action=ConfirmSubscription&") == 1


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", json.dumps({"Type": "Notification"}).encode()])
async def test_garbage_on_the_ses_route_is_a_422(client: TestClient[Any, Any], raw: bytes) -> None:
    resp = await client.post(
        "/webhooks/ses", data=raw, headers={"x-amz-sns-message-type": "Notification"}
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "validation_error"
