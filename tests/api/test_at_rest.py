"""Nothing readable at rest: after a full OTP, link and message walkthrough on Redis (with
some messages still queued, retrying and dead-lettered), no key or value holds a code, a
token, an address or a phone number in clear."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis.asyncio as aioredis

from otpd.models import Message
from otpd.store.redis import RedisStore
from tests.api.helpers import MOBILE, Start, body_of, link_in, newest_mail, token_of
from tests.conftest import free_port

ADDRESS = "jane.doe@example.com"
BODY_TEXT = "private body 7f3a9c"


async def dump(url: str, prefix: str) -> str:
    """Every key under ``prefix`` with its whole value, as one text."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    parts: list[str] = []
    try:
        async for key in r.scan_iter(match=f"{prefix}*", count=500):
            kind = await r.type(key)
            value: Any
            if kind == "string":
                value = await r.get(key)
            elif kind == "hash":
                value = await r.hgetall(key)
            elif kind == "zset":
                value = await r.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                value = await r.smembers(key)
            elif kind == "list":
                value = await r.lrange(key, 0, -1)
            elif kind == "stream":
                value = await r.xrange(key)
            else:  # pragma: no cover - otpd stores no other type
                value = kind
            parts.append(f"{key} = {value!r}")
    finally:
        await r.aclose()
    return "\n".join(parts)


def digits(number: str) -> str:
    return re.sub(r"\D", "", number)


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_redis_dump_after_a_walkthrough_holds_nothing_readable(
    start: Start, backend: str
) -> None:
    daemon, client = await start(sms={"providers": ["console"]})
    prefix = daemon.config.store.key_prefix
    url = daemon.config.store.redis_url
    # an OTP by email and SMS, verified
    resp = await client.post(
        "/v1/otp", json={"user_id": "42", "channel": "both", "email": ADDRESS, "phone": MOBILE}
    )
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()
    code = re.search(r"\b(\d{6})\b", body_of(newest_mail(daemon.config, "otp_code"), "plain"))
    assert code is not None
    # a verification link, confirmed; a reset link left live
    resp = await client.post("/v1/email-verifications", json={"user_id": "42", "email": ADDRESS})
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()
    verify_token = token_of(link_in(newest_mail(daemon.config, "email_verification")))
    resp = await client.post("/v1/password-resets", json={"user_id": "42", "email": ADDRESS})
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()
    reset_token = token_of(link_in(newest_mail(daemon.config, "password_reset")))
    # a message, sent
    resp = await client.post(
        "/v1/messages",
        json={"channel": "email", "to": ADDRESS, "subject": "Hi", "text": BODY_TEXT},
    )
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()

    assert (
        await client.post("/v1/otp/verify", json={"user_id": "42", "code": code.group(1)})
    ).status == 200
    assert (
        await client.post("/v1/email-verifications/confirm", json={"token": verify_token})
    ).status == 200
    secrets_seen = {
        "code": code.group(1),
        "verification token": verify_token,
        "reset token": reset_token,
    }
    await assert_nothing_readable(url, prefix, secrets_seen)


@pytest.mark.parametrize("backend", ["redis"])
async def test_queued_retrying_and_dead_messages_are_sealed(start: Start, backend: str) -> None:
    """Mail that cannot go out (its SMTP relay is down) keeps its body in Redis: sealed."""
    daemon, client = await start(
        email={"providers": ["smtp"]},
        smtp={"host": "127.0.0.1", "port": free_port(), "tls": "none", "timeout_seconds": 0.5},
        dispatch={"max_attempts": 2},
    )
    prefix = daemon.config.store.key_prefix
    url = daemon.config.store.redis_url
    resp = await client.post("/v1/otp", json={"user_id": "7", "channel": "email", "email": ADDRESS})
    assert resp.status == 202, await resp.text()
    otp_task = (await resp.json())["deliveries"][0]["task_id"]
    resp = await client.post(
        "/v1/messages",
        json={"channel": "email", "to": ADDRESS, "subject": "Hi", "text": BODY_TEXT},
    )
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()
    letters = await daemon.dispatcher.dead_letters(10)
    assert {d.recipient for d in letters} == {"j***@example.com"}
    assert isinstance(daemon.store, RedisStore)
    # the code is only known from the sealed body: open it the way the daemon does
    sealed = await daemon.store.redis.hget(daemon.store.layout.task(otp_task), "body")
    assert isinstance(sealed, str)
    message = Message.from_json(daemon.keyring.open(sealed, otp_task))
    code = re.search(r"\b(\d{6})\b", message.text)
    assert code is not None
    await assert_nothing_readable(url, prefix, {"code": code.group(1)})


async def assert_nothing_readable(url: str, prefix: str, secrets_seen: dict[str, str]) -> None:
    text = await dump(url, prefix)
    assert text, "nothing stored?"
    lowered = text.lower()
    found = {name: value for name, value in secrets_seen.items() if value in text}
    assert not found, found
    for needle in (ADDRESS, "jane.doe", BODY_TEXT, MOBILE, digits(MOBILE)):
        assert needle.lower() not in lowered, needle
