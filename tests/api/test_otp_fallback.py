"""``POST /v1/otp`` with ``fallback`` and ``GET /v1/otp/{otp_id}`` over HTTP: the caller
sees where the code went."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from otpd.api.routes import OTPD
from otpd.app import Otpd
from otpd.clock import FakeClock
from tests.api.helpers import EMAIL, MOBILE, Client, error_of
from tests.conftest import ConfigFactory, open_client, outbox_files, wait_idle
from tests.services.test_fallback import failing_sms
from tests.services.test_otp import code_from_email


@pytest.fixture
async def client(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> AsyncIterator[Client]:
    async with Otpd(make_config(backend, **failing_sms()), clock=clock) as daemon:
        c = await open_client(daemon)
        try:
            yield c
        finally:
            await c.close()


async def get_otp(client: Client, otp_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/otp/{otp_id}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_a_failed_sms_falls_back_to_email_as_get_otp_shows(client: Client) -> None:
    body = {"user_id": "u1", "channel": "sms", "phone": MOBILE, "email": EMAIL}
    resp = await client.post("/v1/otp", json={**body, "fallback": "email"})
    assert resp.status == 202, await resp.text()
    issued = await resp.json()
    [first] = issued["deliveries"]
    assert first["channel"] == "sms"
    daemon = client.app[OTPD]
    await wait_idle(daemon)
    await wait_idle(daemon)
    shown = await get_otp(client, issued["otp_id"])
    assert shown["otp_id"] == issued["otp_id"] and shown["status"] == "pending"
    assert shown["expires_at"] == issued["expires_at"]
    assert [(d["channel"], d["status"], d["fallback"]) for d in shown["deliveries"]] == [
        ("sms", "failed", False),
        ("email", "sent", True),
    ]
    assert shown["deliveries"][0]["task_id"] == first["task_id"]
    [mail] = outbox_files(daemon.config, ".eml")
    resp = await client.post(
        "/v1/otp/verify", json={"user_id": "u1", "code": code_from_email(mail)}
    )
    assert (await resp.json()) == {"verified": True}
    assert (await get_otp(client, issued["otp_id"]))["status"] == "verified"
    task = await client.get(f"/v1/tasks/{shown['deliveries'][1]['task_id']}")
    assert (await task.json())["status"] == "sent"


@pytest.mark.parametrize(
    "fields",
    [
        {"channel": "sms", "phone": MOBILE, "email": EMAIL, "fallback": "sms"},
        {"channel": "both", "phone": MOBILE, "email": EMAIL, "fallback": "email"},
        {"channel": "sms", "phone": MOBILE, "fallback": "email"},
        {"channel": "sms", "phone": MOBILE, "email": EMAIL, "fallback": 3},
        {"channel": "sms", "phone": MOBILE, "email": EMAIL, "fallback": "x" * 17},
    ],
)
async def test_a_bad_fallback_is_a_422(client: Client, fields: dict[str, Any]) -> None:
    resp = await client.post("/v1/otp", json={"user_id": "u1", **fields})
    await error_of(resp, 422, "validation_error")


@pytest.mark.parametrize("otp_id", ["otp_unknown", "tsk_abc", "verify", "otp_" + "a" * 200])
async def test_an_unknown_or_untracked_code_is_a_404(client: Client, otp_id: str) -> None:
    await error_of(await client.get(f"/v1/otp/{otp_id}"), 404, "not_found")
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL})
    plain = await resp.json()
    await error_of(await client.get(f"/v1/otp/{plain['otp_id']}"), 404, "not_found")
