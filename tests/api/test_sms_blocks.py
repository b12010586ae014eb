"""``/v1/sms/blocks`` over HTTP: a range blocked for low conversion is listed, answers 429
``sms_blocked`` ``low_conversion``, and is lifted by ``DELETE``."""

from __future__ import annotations

from typing import Any

from otpd.crypto import api_key_digest
from tests.api.helpers import Client, Start, error_of

KEY = "sms-blocks-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
KEYS = {"keys": [{"name": "ops", "sha256": api_key_digest(KEY)}]}
RANGE = "+14155552"
SMS: dict[str, Any] = {"prefix_max_numbers": 10_000, "conversion_min_samples": 5}


async def otp(client: Client, n: int, headers: dict[str, str] | None = None) -> Any:
    body = {"user_id": f"user-{n}", "channel": "sms", "phone": f"{RANGE}{600 + n}"}
    return await client.post("/v1/otp", json=body, headers=headers)


async def block_range(client: Client, headers: dict[str, str] | None = None) -> None:
    for n in range(5):
        resp = await otp(client, n, headers)
        assert resp.status == 202, await resp.text()
    details = await error_of(await otp(client, 5, headers), 429, "sms_blocked")
    assert details["reason"] == "low_conversion"


async def test_blocked_range_is_listed_and_deleting_it_lets_codes_through(start: Start) -> None:
    _, client = await start(sms=SMS)
    resp = await client.get("/v1/sms/blocks")
    assert (resp.status, await resp.json()) == (200, {"blocks": []})
    await block_range(client)
    resp = await client.get("/v1/sms/blocks")
    assert resp.status == 200
    [shown] = (await resp.json())["blocks"]
    assert shown["prefix"] == RANGE
    assert (shown["reason"], shown["sent"], shown["verified"]) == ("low_conversion", 5, 0)
    assert shown["blocked_at"].endswith("Z") and shown["expires_at"] > shown["blocked_at"]

    resp = await client.delete(f"/v1/sms/blocks/{RANGE}")
    assert resp.status == 204
    assert (await (await client.get("/v1/sms/blocks")).json()) == {"blocks": []}
    resp = await otp(client, 6)
    assert resp.status == 202, await resp.text()


async def test_a_percent_encoded_plus_names_the_same_range(start: Start) -> None:
    _, client = await start(sms=SMS)
    await block_range(client)
    resp = await client.delete("/v1/sms/blocks/%2B14155552")
    assert resp.status == 204


async def test_deleting_a_range_that_is_not_blocked_is_404(start: Start) -> None:
    _, client = await start(sms=SMS)
    await error_of(await client.delete(f"/v1/sms/blocks/{RANGE}"), 404, "not_found")


async def test_a_prefix_not_of_prefix_digits_digits_is_422(start: Start) -> None:
    _, client = await start(sms=SMS)
    for bad in ("14155552", "+1415555", "+141555526", "+1415555x", "%2B"):
        details = await error_of(
            await client.delete(f"/v1/sms/blocks/{bad}"), 422, "validation_error"
        )
        assert "prefix" in details["fields"]


async def test_unknown_query_parameters_are_422(start: Start) -> None:
    _, client = await start(sms=SMS)
    await error_of(await client.get("/v1/sms/blocks?limit=5"), 422, "validation_error")


async def test_sms_blocks_need_the_api_key(start: Start) -> None:
    _, client = await start(sms=SMS, auth=KEYS)
    await error_of(await client.get("/v1/sms/blocks"), 401, "unauthorized")
    await error_of(await client.delete(f"/v1/sms/blocks/{RANGE}"), 401, "unauthorized")
    await block_range(client, AUTH)
    resp = await client.get("/v1/sms/blocks", headers=AUTH)
    assert [b["prefix"] for b in (await resp.json())["blocks"]] == [RANGE]
    await error_of(await client.delete(f"/v1/sms/blocks/{RANGE}"), 401, "unauthorized")
    resp = await client.delete(f"/v1/sms/blocks/{RANGE}", headers=AUTH)
    assert resp.status == 204
