"""The suppression list over HTTP: a suppressed recipient gets no OTP (422 up front) and no
message (the task fails ``suppressed``); lifting the entry lets both through again."""

from __future__ import annotations

import pytest

from otpd.crypto import api_key_digest
from tests.api.helpers import EMAIL, MOBILE, Start, error_of, wait_task
from tests.api.test_at_rest import ADDRESS, assert_nothing_readable
from tests.conftest import outbox_files

KEY = "suppression-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
KEYS = {"keys": [{"name": "backend-web", "sha256": api_key_digest(KEY)}]}


async def test_a_suppressed_email_gets_no_code_until_the_entry_is_deleted(start: Start) -> None:
    _, client = await start()
    resp = await client.get("/v1/suppressions", params={"address": EMAIL})
    assert resp.status == 200
    assert await resp.json() == {"suppressed": False, "reason": None, "since": None}

    resp = await client.post("/v1/suppressions", json={"address": EMAIL, "reason": "bounce"})
    assert resp.status == 201, await resp.text()
    added = await resp.json()
    assert (added["suppressed"], added["reason"]) == (True, "bounce")
    resp = await client.get("/v1/suppressions", params={"address": EMAIL.upper()})
    got = await resp.json()
    assert got == {"suppressed": True, "reason": "bounce", "since": added["since"]}
    assert got["since"].endswith("Z")

    otp = {"user_id": "42", "channel": "email", "email": EMAIL}
    details = await error_of(await client.post("/v1/otp", json=otp), 422, "recipient_suppressed")
    assert details == {"field": "email"}
    assert EMAIL not in str(details)

    resp = await client.delete("/v1/suppressions", params={"address": EMAIL})
    assert resp.status == 204
    assert (await (await client.get("/v1/suppressions", params={"address": EMAIL})).json())[
        "suppressed"
    ] is False
    resp = await client.post("/v1/otp", json=otp)
    assert resp.status == 202, await resp.text()


async def test_a_number_in_another_format_is_the_same_entry_and_blocks_both(
    start: Start,
) -> None:
    _, client = await start()
    spaced = f"{MOBILE[:3]} {MOBILE[3:6]} {MOBILE[6:]}"
    resp = await client.post("/v1/suppressions", json={"address": spaced, "reason": "opt_out"})
    assert resp.status == 201, await resp.text()
    resp = await client.get("/v1/suppressions", params={"address": MOBILE})
    assert (await resp.json())["reason"] == "opt_out"
    both = {"user_id": "42", "channel": "both", "email": EMAIL, "phone": MOBILE}
    details = await error_of(await client.post("/v1/otp", json=both), 422, "recipient_suppressed")
    assert details == {"field": "phone"}


async def test_a_message_to_a_suppressed_address_fails_and_reaches_no_provider(
    start: Start,
) -> None:
    daemon, client = await start()
    await daemon.suppressions.add(EMAIL, "complaint", source="webhook")
    resp = await client.post(
        "/v1/messages", json={"channel": "email", "to": EMAIL, "subject": "s", "text": "hi"}
    )
    assert resp.status == 202, await resp.text()
    task = await wait_task(client, (await resp.json())["task_id"])
    assert task["status"] == "failed"
    assert task["last_error"].startswith("suppressed:")
    assert outbox_files(daemon.config, ".eml") == []
    assert (await (await client.get("/v1/dead-letters")).json()) == {"dead_letters": []}
    await daemon.audit.flush()
    events, _ = await daemon.audit.events(event="message_failed")
    assert [e["reason"] for e in events] == ["suppressed"]
    [added] = (await daemon.audit.events(event="recipient_suppressed"))[0]
    assert (added["recipient"], added["source"]) == ("u***@example.com", "webhook")


async def test_bad_addresses_reasons_and_parameters_are_422(start: Start) -> None:
    _, client = await start()
    for address in ("not-an-address", "0170 1234567", ""):
        await error_of(
            await client.get("/v1/suppressions", params={"address": address}),
            422,
            "validation_error",
        )
    await error_of(await client.get("/v1/suppressions"), 422, "validation_error")
    await error_of(
        await client.delete("/v1/suppressions", params={"address": EMAIL, "x": "1"}),
        422,
        "validation_error",
    )
    for body in ({"address": EMAIL, "reason": ""}, {"address": EMAIL, "extra": 1}, {}):
        await error_of(await client.post("/v1/suppressions", json=body), 422, "validation_error")


async def test_the_routes_need_the_api_key(start: Start) -> None:
    _, client = await start(auth=KEYS)
    await error_of(
        await client.get("/v1/suppressions", params={"address": EMAIL}), 401, "unauthorized"
    )
    await error_of(
        await client.post("/v1/suppressions", json={"address": EMAIL, "reason": "manual"}),
        401,
        "unauthorized",
    )
    resp = await client.get("/v1/suppressions", params={"address": EMAIL}, headers=AUTH)
    assert resp.status == 200


@pytest.mark.parametrize("backend", ["redis"])
async def test_suppressed_addresses_are_not_readable_in_redis(start: Start) -> None:
    daemon, client = await start()
    for address, reason in ((ADDRESS, "bounce"), (MOBILE, "opt_out")):
        resp = await client.post("/v1/suppressions", json={"address": address, "reason": reason})
        assert resp.status == 201, await resp.text()
    await daemon.audit.flush()
    store = daemon.config.store
    await assert_nothing_readable(store.redis_url, store.key_prefix, {})
