"""TOTP and recovery codes over HTTP, on both stores: codes computed here, independently,
from the secret the enrolment returns."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
from typing import Any

import pytest
import redis.asyncio as aioredis

from otpd.clock import FakeClock, rfc3339
from otpd.crypto import api_key_digest
from tests.api.helpers import EMAIL, Client, Start, body_of, error_of, newest_mail

PERIOD = 30
RECOVERY = re.compile(r"[0-9a-z]{4}-[0-9a-z]{4}")


def raw_secret(secret: str) -> bytes:
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def code_at(secret: str, step: int, digits: int = 6, digest: str = "sha1") -> str:
    """RFC 4226 HOTP of ``step``, written out here so the test does not trust otpd's."""
    mac = hmac.new(raw_secret(secret), step.to_bytes(8, "big"), digest).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_of(clock: FakeClock) -> int:
    return int(clock.time() // PERIOD)


async def post(client: Client, path: str, body: dict[str, Any], status: int = 200) -> Any:
    resp = await client.post(path, json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def enroll(client: Client, user_id: str = "u1") -> dict[str, Any]:
    body: dict[str, Any] = await post(
        client,
        "/v1/totp/enrollments",
        {"user_id": user_id, "account_name": "jane@example.com"},
        201,
    )
    return body


async def enable(client: Client, clock: FakeClock, user_id: str = "u1") -> tuple[str, list[str]]:
    secret = (await enroll(client, user_id))["secret"]
    confirmed = await post(
        client,
        "/v1/totp/enrollments/confirm",
        {"user_id": user_id, "code": code_at(secret, step_of(clock))},
    )
    assert confirmed["enabled"] is True
    return secret, confirmed["recovery_codes"]


async def verify(client: Client, code: str, user_id: str = "u1") -> Any:
    return await post(client, "/v1/totp/verify", {"user_id": user_id, "code": code})


async def test_enrol_confirm_verify_replay_lockout_recovery_regenerate_delete(
    start: Start, backend: str, clock: FakeClock
) -> None:
    _, client = await start()
    started = await enroll(client)
    assert set(started) == {"secret", "otpauth_uri", "qr_svg", "expires_at"}
    secret = started["secret"]
    assert re.fullmatch(r"[A-Z2-7]+", secret)
    assert len(raw_secret(secret)) == 20
    assert started["otpauth_uri"].startswith("otpauth://totp/otpd:jane@example.com?")
    assert f"secret={secret}" in started["otpauth_uri"]
    assert "issuer=otpd" in started["otpauth_uri"]
    assert started["qr_svg"].startswith("<svg")
    assert started["expires_at"] == rfc3339(clock.time() + 600)

    step = step_of(clock)
    confirmed = await post(
        client, "/v1/totp/enrollments/confirm", {"user_id": "u1", "code": code_at(secret, step)}
    )
    assert set(confirmed) == {"enabled", "recovery_codes"}
    assert confirmed["enabled"] is True
    codes = confirmed["recovery_codes"]
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(RECOVERY.fullmatch(c) for c in codes)

    # the confirming code is spent
    assert await verify(client, code_at(secret, step)) == {"verified": False, "reason": "replayed"}
    clock.advance(PERIOD)
    assert await verify(client, code_at(secret, step + 1)) == {"verified": True}
    assert await verify(client, code_at(secret, step + 1)) == {
        "verified": False,
        "reason": "replayed",
    }
    # a code from two steps ahead is outside the window
    assert await verify(client, code_at(secret, step + 3)) == {
        "verified": False,
        "reason": "invalid_code",
    }
    # four more failures make five: then even a right code gets a 429
    for _ in range(4):
        wrong = "000000" if code_at(secret, step + 2) != "000000" else "111111"
        assert (await verify(client, wrong))["reason"] == "invalid_code"
    resp = await client.post(
        "/v1/totp/verify", json={"user_id": "u1", "code": code_at(secret, step + 2)}
    )
    details = await error_of(resp, 429, "rate_limited")
    assert 1 <= int(resp.headers["Retry-After"]) <= 900
    assert details["scope"] == "totp_failures"
    resp = await client.post("/v1/recovery-codes/verify", json={"user_id": "u1", "code": codes[0]})
    await error_of(resp, 429, "rate_limited")

    clock.advance(900)
    # a recovery code works once
    assert await post(client, "/v1/recovery-codes/verify", {"user_id": "u1", "code": codes[0]}) == {
        "verified": True,
        "remaining": 9,
    }
    assert await post(client, "/v1/recovery-codes/verify", {"user_id": "u1", "code": codes[0]}) == {
        "verified": False,
        "reason": "invalid_code",
    }
    # typed in capitals, without the dash, it is the same code
    assert await post(
        client,
        "/v1/recovery-codes/verify",
        {"user_id": "u1", "code": codes[1].replace("-", "").upper()},
    ) == {"verified": True, "remaining": 8}

    regenerated = await post(client, "/v1/recovery-codes/regenerate", {"user_id": "u1"})
    new_codes = regenerated["recovery_codes"]
    assert len(new_codes) == 10
    assert not set(new_codes) & set(codes)
    assert (await post(client, "/v1/recovery-codes/verify", {"user_id": "u1", "code": codes[2]}))[
        "reason"
    ] == "invalid_code"
    assert await post(
        client, "/v1/recovery-codes/verify", {"user_id": "u1", "code": new_codes[0]}
    ) == {"verified": True, "remaining": 9}

    resp = await client.delete("/v1/totp/u1")
    assert resp.status == 204, await resp.text()
    await error_of(await client.delete("/v1/totp/u1"), 404, "not_found")
    now_step = step_of(clock)
    assert await verify(client, code_at(secret, now_step)) == {
        "verified": False,
        "reason": "not_enrolled",
    }
    assert await post(
        client, "/v1/recovery-codes/verify", {"user_id": "u1", "code": new_codes[1]}
    ) == {"verified": False, "reason": "not_enrolled"}
    resp = await client.post("/v1/recovery-codes/regenerate", json={"user_id": "u1"})
    await error_of(resp, 404, "not_found")
    # and a new enrolment can start
    assert (await enroll(client))["secret"] != secret


async def test_an_enabled_user_gets_409_on_enrolment(
    start: Start, backend: str, clock: FakeClock
) -> None:
    _, client = await start()
    await enable(client, clock)
    resp = await client.post(
        "/v1/totp/enrollments", json={"user_id": "u1", "account_name": "jane@example.com"}
    )
    await error_of(resp, 409, "totp_already_enabled")


async def test_confirm_without_a_pending_enrolment_is_404_and_a_wrong_code_is_not_enabled(
    start: Start, backend: str, clock: FakeClock
) -> None:
    _, client = await start()
    resp = await client.post(
        "/v1/totp/enrollments/confirm", json={"user_id": "u1", "code": "123456"}
    )
    await error_of(resp, 404, "not_found")
    secret = (await enroll(client))["secret"]
    wrong = "000000" if code_at(secret, step_of(clock)) != "000000" else "111111"
    for near in (-1, 0, 1):
        assert wrong != code_at(secret, step_of(clock) + near) or pytest.skip("code collision")
    assert await post(client, "/v1/totp/enrollments/confirm", {"user_id": "u1", "code": wrong}) == {
        "enabled": False,
        "reason": "invalid_code",
    }
    assert await verify(client, code_at(secret, step_of(clock))) == {
        "verified": False,
        "reason": "not_enrolled",
    }


async def test_restarting_an_enrolment_replaces_its_secret_and_it_expires(
    start: Start, backend: str, clock: FakeClock
) -> None:
    _, client = await start()
    first = (await enroll(client))["secret"]
    second = (await enroll(client))["secret"]
    assert first != second
    old = await post(
        client,
        "/v1/totp/enrollments/confirm",
        {"user_id": "u1", "code": code_at(first, step_of(clock))},
    )
    assert old["enabled"] is False or code_at(first, step_of(clock)) == code_at(
        second, step_of(clock)
    )
    clock.advance(600)
    resp = await client.post(
        "/v1/totp/enrollments/confirm",
        json={"user_id": "u1", "code": code_at(second, step_of(clock))},
    )
    await error_of(resp, 404, "not_found")


async def test_fifty_concurrent_verifies_of_one_code_verify_once(
    start: Start, backend: str, clock: FakeClock
) -> None:
    _, client = await start()
    secret, _ = await enable(client, clock)
    clock.advance(PERIOD)
    code = code_at(secret, step_of(clock))
    answers = await asyncio.gather(*(verify(client, code) for _ in range(50)))
    assert [a["verified"] for a in answers].count(True) == 1
    assert all(a == {"verified": False, "reason": "replayed"} for a in answers if not a["verified"])


async def test_sha256_with_eight_digits_uses_a_32_byte_secret(
    start: Start, backend: str, clock: FakeClock
) -> None:
    _, client = await start(
        totp={"algorithm": "SHA256", "digits": 8, "issuer": "Acme"}, product={"name": "Other"}
    )
    started = await enroll(client)
    secret = started["secret"]
    assert len(raw_secret(secret)) == 32
    uri = started["otpauth_uri"]
    assert uri.startswith("otpauth://totp/Acme:")
    assert "algorithm=SHA256" in uri
    assert "digits=8" in uri
    code = code_at(secret, step_of(clock), 8, "sha256")
    confirmed = await post(client, "/v1/totp/enrollments/confirm", {"user_id": "u1", "code": code})
    assert confirmed["enabled"] is True
    clock.advance(PERIOD)
    assert await verify(client, code_at(secret, step_of(clock), 8, "sha256")) == {"verified": True}


async def test_confirm_and_delete_send_a_security_notice_when_given_an_email(
    start: Start, backend: str, clock: FakeClock
) -> None:
    daemon, client = await start()
    secret = (await enroll(client))["secret"]
    confirmed = await post(
        client,
        "/v1/totp/enrollments/confirm",
        {"user_id": "u1", "code": code_at(secret, step_of(clock)), "email": EMAIL},
    )
    assert confirmed["enabled"] is True
    await daemon.dispatcher.wait_idle()
    enabled = newest_mail(daemon.config, "totp_enabled")
    assert enabled["To"] == EMAIL
    assert "turned on" in enabled["Subject"]
    text = body_of(enabled, "plain")
    assert secret not in text
    assert not any(code in text for code in confirmed["recovery_codes"])
    resp = await client.delete("/v1/totp/u1", json={"email": EMAIL, "locale": "de"})
    assert resp.status == 204, await resp.text()
    await daemon.dispatcher.wait_idle()
    disabled = newest_mail(daemon.config, "totp_disabled")
    assert "ausgeschaltet" in disabled["Subject"]


async def test_the_secret_is_in_no_audit_record_or_log_line(
    start: Start, backend: str, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, client = await start()
    secret, codes = await enable(client, clock)
    clock.advance(PERIOD)
    await verify(client, code_at(secret, step_of(clock)))
    await verify(client, "000000")
    await post(client, "/v1/recovery-codes/verify", {"user_id": "u1", "code": codes[0]})
    events, _ = await daemon.audit.events(user_id="u1")
    names = [e["event"] for e in events]
    for event in ("totp_enabled", "totp_verified", "recovery_code_used"):
        assert event in names
    logged = capsys.readouterr().out
    assert "audit.totp_enabled" in logged
    assert "audit.totp_verified" in logged
    assert "audit.totp_failed" in logged
    assert "audit.recovery_code_used" in logged
    dumped = repr(events) + logged
    assert secret not in dumped
    assert raw_secret(secret).hex() not in dumped
    assert not any(code in dumped for code in codes)


async def test_the_routes_need_the_api_key(start: Start, backend: str) -> None:
    key = "k-0123456789abcdef0123456789abcdef"
    _, client = await start(auth={"keys": [{"name": "web", "sha256": api_key_digest(key)}]})
    resp = await client.post(
        "/v1/totp/enrollments", json={"user_id": "u1", "account_name": "jane@example.com"}
    )
    await error_of(resp, 401, "unauthorized")
    resp = await client.delete("/v1/totp/u1")
    await error_of(resp, 401, "unauthorized")
    resp = await client.post(
        "/v1/totp/enrollments",
        json={"user_id": "u1", "account_name": "jane@example.com"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 201, await resp.text()


async def test_malformed_bodies_get_the_uniform_422(start: Start, backend: str) -> None:
    _, client = await start()
    for path, body in [
        ("/v1/totp/enrollments", {"user_id": "u1"}),
        ("/v1/totp/enrollments", {"user_id": "u1", "account_name": "a:b"}),
        ("/v1/totp/verify", {"user_id": "u1", "code": "12ab56"}),
        ("/v1/totp/verify", {"user_id": "u1", "code": "123456", "extra": 1}),
        ("/v1/recovery-codes/regenerate", {}),
    ]:
        await error_of(await client.post(path, json=body), 422, "validation_error")


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def keys_and_values(url: str, prefix: str) -> bytes:
    """Every key under ``prefix`` and its whole value, as raw bytes."""
    r = aioredis.Redis.from_url(url)
    parts: list[bytes] = []
    try:
        async for key in r.scan_iter(match=f"{prefix}*", count=500):
            kind = as_bytes(await r.type(key)).decode()
            zset: Any = None
            stream: Any = None
            parts.append(as_bytes(key))
            values: list[Any]
            if kind == "string":
                values = [await r.get(key)]
            elif kind == "hash":
                values = [part for item in (await r.hgetall(key)).items() for part in item]
            elif kind == "zset":
                zset = await r.zrange(key, 0, -1, withscores=True)
                values = [member for member, _ in zset]
            elif kind == "stream":
                stream = await r.xrange(key)
                values = [part for _, fields in stream for item in fields.items() for part in item]
            else:  # pragma: no cover
                values = [kind]
            parts += [as_bytes(v) for v in values if v is not None]
    finally:
        await r.aclose()
    return b"\n".join(parts)


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_redis_dump_after_enrolment_holds_no_usable_secret(
    start: Start, backend: str, clock: FakeClock
) -> None:
    daemon, client = await start()
    pending = (await enroll(client, "u2"))["secret"]
    secret, codes = await enable(client, clock)
    dump = await keys_and_values(daemon.config.store.redis_url, daemon.config.store.key_prefix)
    assert b"totp" in dump  # the records are there, sealed
    for b32 in (secret, pending):
        raw = raw_secret(b32)
        for form in (
            b32.encode(),
            raw,
            raw.hex().encode(),
            base64.b64encode(raw),
            base64.urlsafe_b64encode(raw),
        ):
            assert form not in dump
    for code in codes:
        assert code.encode() not in dump
        assert code.replace("-", "").encode() not in dump
        assert hashlib.sha256(code.encode()).hexdigest().encode() not in dump
