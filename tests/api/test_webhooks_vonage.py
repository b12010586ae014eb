"""``POST /webhooks/vonage`` end to end: a signed delivery receipt moves the SMS task it
names, a permanent failure suppresses the number, a forged one changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.models import Channel, TaskRecord, TaskStatus
from tests.conftest import ConfigFactory, open_client

SECRET = "vonage-signature-secret"
MESSAGE_ID = "0A0000001234567B"  # messages[0]["message-id"] of the send, as stored
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def otpd(make_config: ConfigFactory, backend: str, clock: FakeClock) -> AsyncIterator[Otpd]:
    config = make_config(backend, vonage={"signature_secret": SECRET, "signature_method": "sha256"})
    async with Otpd(config, clock=clock) as daemon:
        yield daemon


@pytest.fixture
async def client(otpd: Otpd) -> AsyncIterator[TestClient[Any, Any]]:
    c = await open_client(otpd)
    try:
        yield c
    finally:
        await c.close()


async def sent_sms(otpd: Otpd, task_id: str) -> None:
    now = otpd.clock.time()
    record = TaskRecord(
        task_id=task_id,
        channel=Channel.SMS,
        status=TaskStatus.SENT,
        tag="otp_code",
        created_at=now,
        updated_at=now,
        attempts=1,
        provider="vonage",
        provider_message_id=MESSAGE_ID,
    )
    await otpd.store.put_task(record, otpd.config.dispatch.task_ttl_seconds)
    await otpd.deliveries.linked(record)


async def task(client: TestClient[Any, Any], task_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/tasks/{task_id}")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def receipt(clock: FakeClock, secret: str = SECRET, **fields: str) -> dict[str, str]:
    """A delivery receipt signed with HMAC-SHA256 the way Vonage's guide describes."""
    params = {
        "msisdn": "14155550100",
        "to": "otpd",
        "messageId": MESSAGE_ID,
        "status": "delivered",
        "err-code": "0",
        "message-timestamp": "2026-12-02 17:00:00",
        "timestamp": str(int(clock.time())),
        "nonce": "ec11dd3e-1e7f-4db5-9467-82b02cd223b9",
        **fields,
    }
    text = "".join(f"&{k}={params[k].replace('&', '_').replace('=', '_')}" for k in sorted(params))
    sig = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    return {**params, "sig": sig}


async def test_a_signed_delivered_receipt_marks_the_sms_task_delivered(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock
) -> None:
    await sent_sms(otpd, "tsk_000000000000000000000001")
    resp = await client.post(
        "/webhooks/vonage",
        data=json.dumps(receipt(clock)),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert await resp.json() == {"accepted": 1}
    assert (await task(client, "tsk_000000000000000000000001"))["status"] == "delivered"


async def test_a_permanent_failure_suppresses_the_number_for_the_next_otp(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock
) -> None:
    await sent_sms(otpd, "tsk_000000000000000000000002")
    params = receipt(clock, status="failed", **{"err-code": "3"})  # absent, permanent
    resp = await client.post("/webhooks/vonage", data=urlencode(params), headers=FORM)
    assert resp.status == 200
    body = await task(client, "tsk_000000000000000000000002")
    assert (body["status"], body["reason"]) == ("undelivered", "3")
    otp = {"user_id": "u7", "channel": "sms", "phone": "+14155550100"}
    refused = await client.post("/v1/otp", json=otp)
    assert refused.status == 422
    assert (await refused.json())["error"]["code"] == "recipient_suppressed"


async def test_a_forged_receipt_is_refused_and_changes_nothing(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock
) -> None:
    await sent_sms(otpd, "tsk_000000000000000000000003")
    forged = receipt(clock, secret="guessed", status="failed", **{"err-code": "3"})
    resp = await client.post("/webhooks/vonage", data=urlencode(forged), headers=FORM)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert (await task(client, "tsk_000000000000000000000003"))["status"] == "sent"
    otp = {"user_id": "u7", "channel": "sms", "phone": "+14155550100"}
    assert (await client.post("/v1/otp", json=otp)).status == 202


async def test_a_replayed_receipt_is_refused(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock
) -> None:
    await sent_sms(otpd, "tsk_000000000000000000000004")
    body = urlencode(receipt(clock))
    assert (await client.post("/webhooks/vonage", data=body, headers=FORM)).status == 200
    replay = await client.post("/webhooks/vonage", data=body, headers=FORM)
    assert replay.status == 401
    assert (await replay.json())["error"]["code"] == "invalid_signature"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\xff\xfe\x00garbage", 401),
        (b'{"sig": 1e999999}', 401),
        (b"", 401),
        (b"[" * 100_000, 422),  # over server.max_body_bytes: refused before it is parsed
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", FORM["Content-Type"]])
async def test_garbage_never_gives_a_500(
    client: TestClient[Any, Any], raw: bytes, status: int, content_type: str
) -> None:
    resp = await client.post("/webhooks/vonage", data=raw, headers={"Content-Type": content_type})
    assert resp.status == status
    assert "code" in (await resp.json())["error"]


async def test_a_signed_receipt_without_its_fields_is_a_422(
    client: TestClient[Any, Any], clock: FakeClock
) -> None:
    params = receipt(clock)
    del params["sig"], params["messageId"]
    text = "".join(f"&{k}={params[k]}" for k in sorted(params))
    params["sig"] = hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    resp = await client.post("/webhooks/vonage", data=urlencode(params), headers=FORM)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "validation_error"
