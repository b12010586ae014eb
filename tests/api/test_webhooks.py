"""The webhook routes end to end: a signed report moves the task it names; a forged,
replayed or garbled one is refused with the uniform error and changes nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.models import Channel, TaskRecord, TaskStatus
from otpd.webhooks.mailgun import mailgun_signature
from otpd.webhooks.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.conftest import ConfigFactory, open_client

AUTH_TOKEN = "twilio-auth-token"
CALLBACK = "https://otpd.example.com/webhooks/twilio"
MAILGUN_KEY = "mailgun-signing-key"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def otpd(make_config: ConfigFactory, backend: str, clock: FakeClock) -> AsyncIterator[Otpd]:
    config = make_config(
        backend,
        twilio={"auth_token": AUTH_TOKEN, "status_callback": CALLBACK},
        mailgun={"webhook_signing_key": MAILGUN_KEY},
        sendgrid={"webhook_public_key": SENDGRID_PUBLIC},
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


async def sent_task(otpd: Otpd, task_id: str, provider: str, mid: str) -> None:
    now = otpd.clock.time()
    record = TaskRecord(
        task_id=task_id,
        channel=Channel.SMS if provider == "twilio" else Channel.EMAIL,
        status=TaskStatus.SENT,
        tag="otp_code",
        created_at=now,
        updated_at=now,
        attempts=1,
        provider=provider,
        provider_message_id=mid,
    )
    await otpd.store.put_task(record, otpd.config.dispatch.task_ttl_seconds)
    await otpd.deliveries.linked(record)


async def task(client: TestClient[Any, Any], task_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/tasks/{task_id}")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def twilio_form(status: str, code: str = "") -> dict[str, str]:
    params = {"MessageSid": "SM0123", "MessageStatus": status, "To": "+14155550100"}
    if code:
        params["ErrorCode"] = code
    return params


def twilio_headers(params: dict[str, str], url: str = CALLBACK) -> dict[str, str]:
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    return {**FORM, "X-Twilio-Signature": signature}


async def test_a_signed_twilio_undelivered_callback_marks_the_task_undelivered(
    client: TestClient[Any, Any], otpd: Otpd
) -> None:
    await sent_task(otpd, "tsk_aaaaaaaaaaaaaaaaaaaaaaaa", "twilio", "SM0123")
    params = twilio_form("undelivered", "30005")
    resp = await client.post(
        "/webhooks/twilio", data=urlencode(params), headers=twilio_headers(params)
    )
    assert resp.status == 200
    assert await resp.json() == {"accepted": 1}
    body = await task(client, "tsk_aaaaaaaaaaaaaaaaaaaaaaaa")
    assert body["status"] == "undelivered"
    assert body["reason"] == "30005"


async def test_a_forged_twilio_signature_is_refused_and_changes_nothing(
    client: TestClient[Any, Any], otpd: Otpd
) -> None:
    await sent_task(otpd, "tsk_bbbbbbbbbbbbbbbbbbbbbbbb", "twilio", "SM0123")
    params = twilio_form("delivered")
    headers = twilio_headers(params, url="https://attacker.example/webhooks/twilio")
    resp = await client.post("/webhooks/twilio", data=urlencode(params), headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert (await task(client, "tsk_bbbbbbbbbbbbbbbbbbbbbbbb"))["status"] == "sent"


def mailgun_body(clock: FakeClock, token: str, **event: Any) -> bytes:
    """A signed Mailgun webhook; ``event`` replaces fields of a delivered event."""
    timestamp = str(int(clock.time()))
    data = {
        "event": "delivered",
        "id": "ev-1",
        "timestamp": clock.time(),
        "recipient": "ana@example.com",
        "message": {"headers": {"message-id": "20261202.1@mg.example.com"}},
        **event,
    }
    signature = {
        "timestamp": timestamp,
        "token": token,
        "signature": mailgun_signature(MAILGUN_KEY, timestamp, token),
    }
    return json.dumps({"signature": signature, "event-data": data}).encode()


async def test_a_mailgun_delivered_event_counts_once_and_its_replay_is_refused(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock
) -> None:
    await sent_task(otpd, "tsk_cccccccccccccccccccccccc", "mailgun", "<20261202.1@mg.example.com>")
    body = mailgun_body(clock, "token-1")
    first = await client.post("/webhooks/mailgun", data=body)
    assert first.status == 200
    assert (await task(client, "tsk_cccccccccccccccccccccccc"))["status"] == "delivered"
    replay = await client.post("/webhooks/mailgun", data=body)
    assert replay.status == 401
    assert (await replay.json())["error"]["code"] == "invalid_signature"


def sendgrid_headers(timestamp: str, body: bytes) -> dict[str, str]:
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: timestamp}


async def test_a_signed_sendgrid_delivered_event_marks_the_task_delivered(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock
) -> None:
    await sent_task(otpd, "tsk_dddddddddddddddddddddddd", "sendgrid", "sgmsg14")
    body = json.dumps(
        [
            {
                "event": "delivered",
                "sg_message_id": "sgmsg14.filterdrecv-1",
                "sg_event_id": "sg-ev-1",
                "timestamp": int(clock.time()),
                "email": "ana@example.com",
            }
        ]
    ).encode()
    forged = await client.post(
        "/webhooks/sendgrid",
        data=body.replace(b"delivered", b"dropped!!"),
        headers=sendgrid_headers(str(int(clock.time())), body),
    )
    assert forged.status == 401
    assert (await task(client, "tsk_dddddddddddddddddddddddd"))["status"] == "sent"
    resp = await client.post(
        "/webhooks/sendgrid", data=body, headers=sendgrid_headers(str(int(clock.time())), body)
    )
    assert resp.status == 200
    assert (await task(client, "tsk_dddddddddddddddddddddddd"))["status"] == "delivered"


@pytest.mark.parametrize("provider", ["twilio", "mailgun", "sendgrid"])
@pytest.mark.parametrize(
    "raw", [b"\xff\xfe\x00garbage", b"[" * 100_000, b'{"signature": 1e999999}', b""]
)
async def test_garbage_bytes_never_give_a_500(
    client: TestClient[Any, Any], provider: str, raw: bytes
) -> None:
    resp = await client.post(f"/webhooks/{provider}", data=raw, headers=FORM)
    assert resp.status in {401, 422}
    assert "code" in (await resp.json())["error"]


async def test_a_hard_bounce_suppresses_the_address_until_the_suppression_is_deleted(
    client: TestClient[Any, Any], otpd: Otpd, clock: FakeClock
) -> None:
    await sent_task(otpd, "tsk_eeeeeeeeeeeeeeeeeeeeeeee", "mailgun", "<20261202.9@mg.example.com>")
    resp = await client.post(
        "/webhooks/mailgun",
        data=mailgun_body(
            clock,
            "token-9",
            event="failed",
            severity="permanent",
            reason="bounce",
            id="ev-bounce-1",
            recipient="Gone@Example.com",
            message={"headers": {"message-id": "20261202.9@mg.example.com"}},
        ),
    )
    assert resp.status == 200
    assert (await task(client, "tsk_eeeeeeeeeeeeeeeeeeeeeeee"))["status"] == "bounced"
    listed = await client.get("/v1/suppressions", params={"address": "gone@example.com"})
    body = await listed.json()
    assert body["suppressed"] is True and body["reason"].startswith("bounce: mailgun")
    otp = {"user_id": "u9", "channel": "email", "email": "gone@example.com"}
    refused = await client.post("/v1/otp", json=otp)
    assert refused.status == 422
    assert (await refused.json())["error"]["code"] == "recipient_suppressed"
    lifted = await client.delete("/v1/suppressions", params={"address": "gone@example.com"})
    assert lifted.status == 204
    assert (await client.post("/v1/otp", json=otp)).status == 202


async def test_an_sms_opt_out_suppresses_the_number(
    client: TestClient[Any, Any], otpd: Otpd
) -> None:
    await sent_task(otpd, "tsk_ffffffffffffffffffffffff", "twilio", "SM0123")
    params = twilio_form("undelivered", "21610")  # the recipient replied STOP
    resp = await client.post(
        "/webhooks/twilio", data=urlencode(params), headers=twilio_headers(params)
    )
    assert resp.status == 200
    otp = {"user_id": "u8", "channel": "sms", "phone": "+14155550100"}
    refused = await client.post("/v1/otp", json=otp)
    assert refused.status == 422
    assert (await refused.json())["error"]["code"] == "recipient_suppressed"
