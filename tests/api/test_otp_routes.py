"""HTTP API v1 through aiohttp's test client, on both stores."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web_request

from otpd.app import Otpd
from otpd.clock import FakeClock, rfc3339
from otpd.config import Config, load_config
from otpd.crypto import api_key_digest
from otpd.errors import UnavailableError
from tests.api.helpers import (
    EMAIL,
    MOBILE,
    Client,
    Start,
    assert_error,
    error_of,
    wait_task,
)
from tests.conftest import ConfigFactory, free_port, open_client, outbox_files, wait_for_port

LANDLINE = "+442071838750"  # a London fixed line: valid, but cannot receive SMS
API_KEY = "k-0123456789abcdef0123456789abcdef"


# ---------------------------------------------------------------- helpers


async def issue(
    client: Client,
    user_id: str = "u1",
    channel: str = "email",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user_id, "channel": channel, **extra}
    if channel in ("email", "both"):
        body.setdefault("email", EMAIL)
    if channel in ("sms", "both"):
        body.setdefault("phone", MOBILE)
    resp = await client.post("/v1/otp", json=body, headers=headers)
    assert resp.status == 202, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def verify(client: Client, code: str, user_id: str = "u1", **extra: Any) -> dict[str, Any]:
    resp = await client.post("/v1/otp/verify", json={"user_id": user_id, "code": code, **extra})
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def code_in(path: Path) -> str:
    """The code in an outbox file: the subject of an .eml, the first word of a .txt SMS."""
    data = path.read_bytes()
    if path.suffix == ".eml":
        msg = email.message_from_bytes(data, policy=email.policy.default)
        match = re.match(r"(\d+) is your", str(msg["Subject"]))
    else:
        match = re.search(r"\n\n(\d+) is your", data.decode())
    assert match, data
    return match.group(1)


async def delivered_code(
    client: Client, config: Config, issued: dict[str, Any], channel: str = "email"
) -> str:
    """Wait for the delivery of ``channel`` and read the code from the newest outbox file."""
    (task_id,) = [d["task_id"] for d in issued["deliveries"] if d["channel"] == channel]
    task = await wait_task(client, task_id)
    assert task["status"] == "sent", task
    files = outbox_files(config, ".eml" if channel == "email" else ".txt")
    assert files
    return code_in(files[-1])


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


# ---------------------------------------------------------------- issue and verify


async def test_issue_answers_202_with_otp_id_expiry_and_one_delivery(
    client: Client, otpd: Otpd, clock: FakeClock
) -> None:
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL})
    assert resp.status == 202
    body = await resp.json()
    assert set(body) == {"otp_id", "expires_at", "deliveries"}
    assert isinstance(body["otp_id"], str)
    assert body["otp_id"]
    assert body["expires_at"].endswith("Z")
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.tzinfo is not None
    assert expires.utcoffset() == UTC.utcoffset(None)
    assert body["expires_at"] == rfc3339(clock.time() + otpd.config.otp.ttl_seconds)
    assert len(body["deliveries"]) == 1
    (delivery,) = body["deliveries"]
    assert set(delivery) == {"channel", "task_id"}
    assert delivery["channel"] == "email"
    assert isinstance(delivery["task_id"], str)


async def test_email_code_arrives_in_outbox_and_verifies_once(client: Client, otpd: Otpd) -> None:
    issued = await issue(client)
    code = await delivered_code(client, otpd.config, issued)
    assert len(code) == otpd.config.otp.length
    assert await verify(client, code) == {"verified": True}
    second = await verify(client, code)
    assert second["verified"] is False
    assert second["reason"] == "no_active_code"


async def test_sms_code_arrives_as_txt_and_verifies(client: Client, otpd: Otpd) -> None:
    issued = await issue(client, channel="sms")
    assert [d["channel"] for d in issued["deliveries"]] == ["sms"]
    code = await delivered_code(client, otpd.config, issued, "sms")
    assert outbox_files(otpd.config, ".eml") == []
    assert await verify(client, code) == {"verified": True}


async def test_both_channels_deliver_the_same_code(client: Client, otpd: Otpd) -> None:
    issued = await issue(client, channel="both")
    assert sorted(d["channel"] for d in issued["deliveries"]) == ["email", "sms"]
    assert len({d["task_id"] for d in issued["deliveries"]}) == 2
    by_email = await delivered_code(client, otpd.config, issued, "email")
    by_sms = await delivered_code(client, otpd.config, issued, "sms")
    assert by_email == by_sms
    assert await verify(client, by_sms) == {"verified": True}


async def test_wrong_codes_count_down_then_even_the_right_code_is_refused(
    client: Client, otpd: Otpd
) -> None:
    issued = await issue(client)
    code = await delivered_code(client, otpd.config, issued)
    wrong = other_code(code)
    max_attempts = otpd.config.otp.max_attempts
    for left in range(max_attempts - 1, -1, -1):
        answer = await verify(client, wrong)
        assert answer == {"verified": False, "reason": "invalid_code", "attempts_left": left}
    answer = await verify(client, code)
    assert answer["verified"] is False
    assert answer["reason"] == "too_many_attempts"
    assert answer["attempts_left"] == 0


async def test_verify_without_any_code_answers_no_active_code(client: Client) -> None:
    answer = await verify(client, "123456", user_id="nobody")
    assert answer == {"verified": False, "reason": "no_active_code", "attempts_left": 0}


async def test_new_issue_replaces_the_previous_code(client: Client, otpd: Otpd) -> None:
    first = await delivered_code(client, otpd.config, await issue(client))
    second = await delivered_code(client, otpd.config, await issue(client))
    if first == second:  # one in a million: the replacement cannot be told apart
        pytest.skip("the two random codes happen to be equal")
    answer = await verify(client, first)
    assert answer["reason"] == "invalid_code"
    assert await verify(client, second) == {"verified": True}


async def test_codes_are_bound_to_their_purpose(client: Client, otpd: Otpd) -> None:
    code = await delivered_code(client, otpd.config, await issue(client, purpose="reset"))
    assert (await verify(client, code))["reason"] == "no_active_code"
    assert await verify(client, code, purpose="reset") == {"verified": True}


async def test_expired_code_is_no_longer_active(
    client: Client, otpd: Otpd, clock: FakeClock
) -> None:
    code = await delivered_code(client, otpd.config, await issue(client))
    clock.advance(otpd.config.otp.ttl_seconds + 1)
    assert (await verify(client, code))["reason"] == "no_active_code"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u1", "channel": "email"}, "email"),
        ({"user_id": "u1", "channel": "sms"}, "phone"),
        ({"user_id": "u1", "channel": "sms", "email": EMAIL}, "phone"),
        ({"user_id": "u1", "channel": "email", "email": ""}, "email"),
    ],
)
async def test_missing_address_for_the_channel_is_422(
    client: Client, body: dict[str, Any], field: str
) -> None:
    details = await error_of(await client.post("/v1/otp", json=body), 422, "validation_error")
    assert field in details["fields"]


async def test_both_channels_name_every_missing_address(client: Client) -> None:
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "both"})
    details = await error_of(resp, 422, "validation_error")
    assert set(details["fields"]) == {"email", "phone"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"channel": "email", "email": "not-an-email"}, "email"),
        ({"channel": "email", "email": "a@b"}, "email"),
        ({"channel": "email", "email": "a b@example.com"}, "email"),
        ({"channel": "email", "email": "a@example.com\r\nBcc: x@example.com"}, "email"),
        ({"channel": "email", "email": "a..b@example.com"}, "email"),
        ({"channel": "sms", "phone": "01701234567"}, "phone"),
        ({"channel": "sms", "phone": "+1234"}, "phone"),
        ({"channel": "sms", "phone": "+49 not a number"}, "phone"),
        ({"channel": "sms", "phone": LANDLINE}, "phone"),
        ({"channel": "pigeon", "email": EMAIL}, "channel"),
        ({"channel": "email", "email": EMAIL, "client_ip": "999.1.1.1"}, "client_ip"),
        ({"channel": "email", "email": EMAIL, "purpose": "Log In"}, "purpose"),
        ({"channel": "email", "email": EMAIL, "locale": "english!"}, "locale"),
        ({"channel": "email", "email": EMAIL, "user_agent": "a\x00b"}, "user_agent"),
        ({"channel": "email", "email": EMAIL, "user_id": "has space"}, "user_id"),
        ({"channel": "email", "email": EMAIL, "user_id": ""}, "user_id"),
        ({"channel": "email", "email": EMAIL, "user_id": "x" * 129}, "user_id"),
        ({"channel": "email", "email": EMAIL, "surprise": 1}, "surprise"),
        ({"channel": "email", "email": EMAIL, "user_id": 42}, "user_id"),
        ({"channel": True, "email": EMAIL}, "channel"),
        ({"channel": "email", "email": ["a@example.com"]}, "email"),
        ({"channel": "email", "email": EMAIL, "user_id": None}, "user_id"),
        ({"channel": None, "email": EMAIL}, "channel"),
    ],
)
async def test_bad_issue_field_is_422_naming_the_field(
    client: Client, extra: dict[str, Any], field: str
) -> None:
    body = {"user_id": "u1", **extra}
    details = await error_of(await client.post("/v1/otp", json=body), 422, "validation_error")
    assert field in details["fields"], details


async def test_every_problem_of_a_body_is_listed(client: Client) -> None:
    resp = await client.post("/v1/otp", json={"user_id": 1, "channel": 2, "x": 3})
    details = await error_of(resp, 422, "validation_error")
    assert set(details["fields"]) == {"user_id", "channel", "x"}
    assert details["fields"]["x"] == "unknown field"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "123456"}, "user_id"),
        ({"user_id": "u1"}, "code"),
        ({"user_id": "u1", "code": 123456}, "code"),
        ({"user_id": "u1", "code": "12ab56"}, "code"),
        ({"user_id": "u1", "code": "123"}, "code"),
        ({"user_id": "u1", "code": "\u0661\u0662\u0663\u0664\u0665\u0666"}, "code"),
        ({"user_id": "u1", "code": "123456", "extra": True}, "extra"),
    ],
)
async def test_bad_verify_field_is_422_naming_the_field(
    client: Client, body: dict[str, Any], field: str
) -> None:
    details = await error_of(
        await client.post("/v1/otp/verify", json=body), 422, "validation_error"
    )
    assert field in details["fields"]


@pytest.mark.parametrize("path", ["/v1/otp", "/v1/otp/verify", "/v1/messages"])
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"{'user_id': 'u1'}",
        b'{"user_id": "u1",}',
        b"null",
        b"[]",
        b'["user_id", "u1"]',
        b'"just a string"',
        b"42",
        b"true",
        b"\xff\xfe\xfa not utf-8",
        b'{"user_id": "\xc3\x28"}',
        b"[" * 50_000 + b"]" * 50_000,
        b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
        b"NaN",
    ],
    ids=lambda raw: repr(raw[:16]),
)
async def test_malformed_bodies_are_422_never_500(client: Client, path: str, raw: bytes) -> None:
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    await error_of(resp, 422, "validation_error")


@pytest.mark.parametrize("path", ["/v1/otp", "/v1/otp/verify", "/v1/messages"])
async def test_body_over_64_kib_is_422(client: Client, path: str) -> None:
    raw = json.dumps({"user_id": "u1", "user_agent": "x" * 70_000}).encode()
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    details = await error_of(resp, 422, "validation_error")
    assert "body" in details


async def test_body_just_under_the_limit_is_parsed(client: Client) -> None:
    raw = json.dumps({"user_id": "u1", "padding": "x" * 60_000}).encode()
    resp = await client.post("/v1/otp/verify", data=raw)
    details = await error_of(resp, 422, "validation_error")
    assert details["fields"]["padding"] == "unknown field"


async def test_huge_integer_literal_is_422_not_500(client: Client) -> None:
    raw = b'{"user_id": ' + b"1" * 5000 + b', "code": "123456"}'
    resp = await client.post("/v1/otp/verify", data=raw)
    await error_of(resp, 422, "validation_error")


async def test_utf16_body_is_422(client: Client) -> None:
    raw = json.dumps({"user_id": "u1", "code": "123456"}).encode("utf-16")
    resp = await client.post("/v1/otp/verify", data=raw)
    await error_of(resp, 422, "validation_error")


async def test_undecodable_content_encoding_is_422_not_500(client: Client) -> None:
    raw = json.dumps({"user_id": "u1", "code": "123456"}).encode()
    resp = await client.post("/v1/otp/verify", data=raw, headers={"Content-Encoding": "gzip"})
    await error_of(resp, 422, "validation_error")


async def test_gzip_encoded_body_is_read(client: Client) -> None:
    raw = gzip.compress(json.dumps({"user_id": "u1", "code": "123456"}).encode())
    resp = await client.post("/v1/otp/verify", data=raw, headers={"Content-Encoding": "gzip"})
    assert resp.status == 200
    assert (await resp.json())["reason"] == "no_active_code"


# ---------------------------------------------------------------- rate limits


async def test_sixth_code_within_the_hour_is_429_with_retry_after(
    client: Client, otpd: Otpd, clock: FakeClock
) -> None:
    for _ in range(otpd.config.otp.per_user_hour):
        await issue(client)
        clock.advance(1)
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL})
    details = await error_of(resp, 429, "rate_limited")
    retry_after = details["retry_after"]
    assert isinstance(retry_after, int)
    assert 0 < retry_after <= 3600
    assert resp.headers["Retry-After"] == str(retry_after)
    assert details["scope"] == "user_hour"
    # another user (at another address) is not affected
    await issue(client, "u2", email="other@example.com")
    clock.advance(retry_after)
    await issue(client)


async def test_refused_issue_keeps_the_live_code(client: Client, otpd: Otpd) -> None:
    last = {}
    for _ in range(otpd.config.otp.per_user_hour):
        last = await issue(client)
    code = await delivered_code(client, otpd.config, last)
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL})
    assert resp.status == 429
    assert await verify(client, code) == {"verified": True}


async def test_user_may_request_again_an_hour_later(
    client: Client, otpd: Otpd, clock: FakeClock
) -> None:
    for _ in range(otpd.config.otp.per_user_hour):
        await issue(client)
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL})
    assert resp.status == 429
    assert (await resp.json())["error"]["details"]["retry_after"] == 3600
    clock.advance(3600)
    await issue(client)


async def test_per_day_limit_holds_across_hours(
    client: Client, otpd: Otpd, clock: FakeClock
) -> None:
    per_hour, per_day = otpd.config.otp.per_user_hour, otpd.config.otp.per_user_day
    issued = 0
    while issued < per_day:
        for _ in range(min(per_hour, per_day - issued)):
            await issue(client)
            issued += 1
        clock.advance(3601)
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL})
    details = await error_of(resp, 429, "rate_limited")
    assert details["scope"] == "user_day"
    assert 3600 < details["retry_after"] <= 86400
    assert resp.headers["Retry-After"] == str(details["retry_after"])
    clock.advance(details["retry_after"])
    await issue(client)


async def test_per_client_ip_limit_spans_users(start: Start, clock: FakeClock) -> None:
    _, client = await start(otp={"per_ip_hour": 3})
    for i in range(3):
        await issue(client, f"user{i}", client_ip="203.0.113.7", email=f"u{i}@example.com")
    resp = await client.post(
        "/v1/otp",
        json={"user_id": "user9", "channel": "email", "email": EMAIL, "client_ip": "203.0.113.7"},
    )
    details = await error_of(resp, 429, "rate_limited")
    assert details["scope"] == "ip_hour"
    assert resp.headers["Retry-After"] == str(details["retry_after"])
    await issue(client, "user9", client_ip="203.0.113.8")
    await issue(client, "user10")  # no client_ip: only the user limits apply
    clock.advance(3600)
    await issue(client, "user11", client_ip="203.0.113.7")


# ---------------------------------------------------------------- errors for any input


async def test_unknown_route_is_404_not_found(client: Client) -> None:
    for path in ("/nope", "/v1/nope", "/v2/otp", "/v1/tasks/"):
        await error_of(await client.get(path), 404, "not_found")


async def test_wrong_method_is_405_with_allow(client: Client) -> None:
    resp = await client.get("/v1/otp")
    await error_of(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    await error_of(await client.delete("/v1/tasks/tsk_x"), 405, "method_not_allowed")
    await error_of(await client.post("/healthz"), 405, "method_not_allowed")


_FIELDS = {
    "/v1/otp": [
        "user_id",
        "channel",
        "email",
        "phone",
        "purpose",
        "locale",
        "client_ip",
        "user_agent",
    ],
    "/v1/otp/verify": ["user_id", "code", "purpose", "client_ip", "user_agent"],
    "/v1/messages": [
        "channel",
        "to",
        "template",
        "context",
        "locale",
        "subject",
        "text",
        "html",
        "idempotency_key",
    ],
}
_PLAUSIBLE: dict[str, list[Any]] = {
    "user_id": ["u1", "user-2", "a@b", "x" * 128],
    "channel": ["email", "sms", "both", "EMAIL", ""],
    "email": [EMAIL, "Other@Example.COM", "bad@", "x@example.com\r\nBcc: y@example.com"],
    "to": [EMAIL, MOBILE, LANDLINE, "+1", "nobody"],
    "phone": [MOBILE, LANDLINE, "+33612345678", "0612345678"],
    "purpose": ["login", "reset", "LOGIN", "a" * 33],
    "locale": ["en", "pt-BR", "de", "xx_YY", "../../etc"],
    "client_ip": ["203.0.113.1", "::1", "1.2.3", "fe80::1%eth0"],
    "user_agent": ["curl/8", "\x00", "x" * 600],
    "code": [
        "123456",
        "000000",
        "12345",
        "1234567890",
        "abcdef",
        "\uff11\uff12\uff13\uff14\uff15\uff16",
    ],
    "template": ["otp_code", "base", "../otp_code", "nope", ""],
    "context": [{"code": "1", "ttl_minutes": 1}, {}, {"code": "<b>"}, [], "x"],
    "subject": ["Hi", "Hi\r\nBcc: v@example.com", ""],
    "text": ["hello", "", "\u2603" * 10],
    "html": ["<p>x</p>", ""],
    "idempotency_key": ["k1", "", "x" * 256, "\n"],
}
_ALPHABET = 'az09_-@.+ \t\r\n\x00\x7f\u00e9\u2603\U0001f600\ud800{}[]":,\\'


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 40)))


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(11 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-(10**12), 10**12)
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("inf"), float("nan"), 3.0])
    if kind == 4:
        return _random_text(rng)
    if kind == 5:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 12)))
    if kind == 6:
        return "x" * rng.randrange(0, 3000)
    if kind == 7:
        return rng.choice([v for vs in _PLAUSIBLE.values() for v in vs])
    if kind == 8:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _random_body(rng: random.Random, path: str) -> bytes:
    mode = rng.randrange(10)
    if mode == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if mode == 1:
        obj: Any = _random_value(rng)
    else:
        obj = {}
        for name in _FIELDS[path]:
            roll = rng.random()
            if roll < 0.5 and name in _PLAUSIBLE:
                obj[name] = rng.choice(_PLAUSIBLE[name])
            elif roll < 0.7:
                obj[name] = _random_value(rng)
        if rng.random() < 0.1:
            obj[_random_text(rng)] = _random_value(rng)
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    raw = text.encode("utf-8", "surrogatepass")
    if mode == 2 and raw:
        # garble: cut it short or flip one byte
        if rng.random() < 0.5:
            raw = raw[: rng.randrange(len(raw))]
        else:
            i = rng.randrange(len(raw))
            raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]
    return raw


@pytest.mark.parametrize("path", list(_FIELDS))
async def test_random_garbled_bodies_never_answer_500(
    client: Client, path: str, clock: FakeClock
) -> None:
    rng = random.Random(f"otpd-fuzz-{path}")
    seen: set[int] = set()
    for i in range(200):
        raw = _random_body(rng, path)
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        seen.add(resp.status)
        assert resp.status in {200, 202, 422, 429}, (i, raw[:300], await resp.text())
        if resp.status >= 400:
            assert_error(await resp.json())
        if i % 20 == 0:
            clock.advance(3601)  # let some bodies pass the rate limits again
    assert 422 in seen


# ---------------------------------------------------------------- tasks


async def test_task_record_has_the_documented_fields_and_reaches_sent(
    client: Client, otpd: Otpd, clock: FakeClock
) -> None:
    issued = await issue(client)
    task_id = issued["deliveries"][0]["task_id"]
    resp = await client.get(f"/v1/tasks/{task_id}")
    assert resp.status == 200
    first = await resp.json()
    assert set(first) == {
        "task_id",
        "status",
        "channel",
        "attempts",
        "provider",
        "last_error",
        "provider_message_id",
        "delivered_at",
        "reason",
        "created_at",
        "updated_at",
    }
    assert first["task_id"] == task_id
    assert first["status"] in {"queued", "sending", "retrying", "sent", "failed"}
    done = await wait_task(client, task_id)
    assert done["status"] == "sent"
    assert done["channel"] == "email"
    assert done["attempts"] == 1
    assert done["provider"] == "outbox"
    assert done["last_error"] is None
    # the outbox sends no reports: nothing moves a task past sent
    assert (done["delivered_at"], done["reason"]) == (None, None)
    assert done["created_at"] == rfc3339(clock.time())
    assert done["created_at"].endswith("Z")
    assert done["updated_at"].endswith("Z")


@pytest.mark.parametrize(
    "task_id",
    ["tsk_000000000000000000000000", "tsk_nothex", "abc", "tsk_" + "a" * 300, "%2e%2e"],
)
async def test_unknown_or_malformed_task_id_is_404(client: Client, task_id: str) -> None:
    await error_of(await client.get(f"/v1/tasks/{task_id}"), 404, "not_found")


# ---------------------------------------------------------------- auth


@pytest.fixture
async def authed(start: Start) -> tuple[Otpd, Client]:
    return await start(auth={"keys": [{"name": "web", "sha256": api_key_digest(API_KEY)}]})


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {API_KEY}",
        f"Token {API_KEY}",
        API_KEY,
        "Bearer wrong-key",
        f"Bearer {API_KEY}x",
        f"Bearer {API_KEY[:-1]}",
        f"Bearer {api_key_digest(API_KEY)}",
    ],
)
async def test_v1_without_the_right_bearer_key_is_401(
    authed: tuple[Otpd, Client], authorization: str | None
) -> None:
    _, client = authed
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"user_id": "u1", "channel": "email", "email": EMAIL}
    await error_of(await client.post("/v1/otp", json=body, headers=headers), 401, "unauthorized")
    resp = await client.get("/v1/tasks/tsk_000000000000000000000000", headers=headers)
    await error_of(resp, 401, "unauthorized")
    await error_of(await client.get("/v1/health/messaging", headers=headers), 401, "unauthorized")


async def test_v1_with_the_right_key_works_end_to_end(authed: tuple[Otpd, Client]) -> None:
    daemon, client = authed
    headers = {"Authorization": f"Bearer {API_KEY}"}
    issued = await issue(client, headers=headers)
    task = await wait_task(client, issued["deliveries"][0]["task_id"], headers=headers)
    assert task["status"] == "sent"
    code = code_in(outbox_files(daemon.config, ".eml")[-1])
    resp = await client.post(
        "/v1/otp/verify", json={"user_id": "u1", "code": code}, headers=headers
    )
    assert await resp.json() == {"verified": True}
    resp = await client.get("/v1/tasks/x", headers={"Authorization": f"bearer {API_KEY}"})
    await error_of(resp, 404, "not_found")


async def test_first_authenticated_request_raises_no_aiohttp_warning(
    authed: tuple[Otpd, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = authed
    monkeypatch.setattr(web_request.BaseRequest, "_seen_str_keys", set())
    resp = await client.get("/v1/health/messaging", headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status == 200, await resp.text()


async def test_health_endpoints_need_no_key(authed: tuple[Otpd, Client]) -> None:
    _, client = authed
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


# ---------------------------------------------------------------- health, readiness, metrics


async def test_healthz_is_200(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert resp.content_type == "application/json"


async def test_readyz_names_store_and_dispatcher(client: Client, backend: str) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["store"]["backend"] == backend
    assert body["checks"]["dispatcher"]["ok"] is True


async def test_readyz_is_503_once_the_dispatcher_stopped(client: Client, otpd: Otpd) -> None:
    await otpd.dispatcher.shutdown()
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["checks"]["dispatcher"]["ok"] is False
    assert body["checks"]["store"]["ok"] is True
    # intake is closed too: a new code cannot be queued
    resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL})
    await error_of(resp, 503, "unavailable")


async def test_readyz_is_503_when_the_redis_pool_is_closed(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    async with Otpd(make_config("redis"), clock=clock) as daemon:
        client = await open_client(daemon)
        try:
            assert (await client.get("/readyz")).status == 200
            await daemon.store.aclose()
            resp = await client.get("/readyz")
            assert resp.status == 503
            body = await resp.json()
            assert body["checks"]["store"]["ok"] is False
            assert body["checks"]["dispatcher"]["ok"] is True
        finally:
            await client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    """A redis-server of our own, so a test may stop it; yields (url, process)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            *("--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"),
            *("--dir", str(tmp_path), "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


async def test_readyz_is_503_when_redis_goes_away(
    private_redis: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, proc = private_redis
    config = load_config(
        data={
            "security": {"secret_key": "s" * 40},
            "outbox": {"dir": str(tmp_path / "outbox")},
            "store": {"backend": "redis", "redis_url": url, "socket_timeout_seconds": 0.5},
        },
        env={},
    )
    async with Otpd(config) as daemon:
        client = await open_client(daemon)
        try:
            assert (await client.get("/readyz")).status == 200
            proc.terminate()
            proc.wait(timeout=10)
            resp = await client.get("/readyz")
            assert resp.status == 503
            body = await resp.json()
            assert body["checks"]["store"]["ok"] is False
            assert body["checks"]["store"]["backend"] == "redis"
            assert (await client.get("/healthz")).status == 200
            resp = await client.post(
                "/v1/otp", json={"user_id": "u1", "channel": "email", "email": EMAIL}
            )
            await error_of(resp, 503, "unavailable")
        finally:
            await client.close()


async def test_redis_on_a_closed_port_cannot_open(tmp_path: Path) -> None:
    config = load_config(
        data={
            "security": {"secret_key": "s" * 40},
            "outbox": {"dir": str(tmp_path / "outbox")},
            "store": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0"},
        },
        env={},
    )
    with pytest.raises(UnavailableError):
        async with Otpd(config):
            pass


async def test_metrics_are_prometheus_text(client: Client) -> None:
    await issue(client)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert "# TYPE otpd_otp_issued_total counter" in text
    assert re.search(r'^otpd_otp_issued_total\{channel="email"\} 1\.0$', text, re.M)


async def test_messaging_health_lists_the_dev_providers_closed(client: Client) -> None:
    resp = await client.get("/v1/health/messaging")
    assert resp.status == 200
    providers = {(p["channel"], p["name"]): p for p in (await resp.json())["providers"]}
    assert set(providers) == {("email", "outbox"), ("sms", "console")}
    for p in providers.values():
        assert p["state"] == "closed"
        assert p["consecutive_failures"] == 0
