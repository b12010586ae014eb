"""Redis-only properties: round trips, key layout, what is (not) stored, failure mapping."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import Config, load_config
from otpd.errors import UnavailableError
from otpd.store.base import Bucket, Limit, OtpRecord
from otpd.store.redis import RedisStore, load_script
from tests.conftest import free_port


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def rstore(redis_url: str, key_prefix: str) -> AsyncIterator[RedisStore]:
    cfg = load_config(
        data={"store": {"backend": "redis", "redis_url": redis_url, "key_prefix": key_prefix}},
        env={},
    )
    async with RedisStore(cfg.store) as store:
        yield store


async def count_round_trips(raw: aioredis.Redis, op: Callable[[], Awaitable[object]]) -> list[str]:
    """The commands clients sent while ``op`` ran, read with MONITOR. Commands a script
    runs inside Redis show up as ``lua`` clients and are not round trips."""
    marker = f"marker-{uuid.uuid4().hex}"
    async with raw.monitor() as monitor:
        await op()
        await raw.echo(marker)
        seen: list[tuple[str, str]] = []
        async for event in monitor.listen():
            source = f"{event.get('client_address')}:{event.get('client_port')}"
            if marker in event["command"]:
                # drop what the measuring connection itself sent (its handshake)
                return [cmd for src, cmd in seen if src != source]
            if event.get("client_type") != "lua":
                seen.append((source, event["command"]))
    raise AssertionError("MONITOR ended before the marker")


def otp_record(now: float) -> OtpRecord:
    return OtpRecord("otp_1", "c" * 64, "sms", "login", now, now + 600, 3, "198.51.100.7", "ua")


async def test_issue_and_verify_are_one_evalsha_each(
    rstore: RedisStore, raw: aioredis.Redis, clock: FakeClock
) -> None:
    limits = [
        Limit("user_hour", Bucket.user("u42", "otp"), 5, 3600),
        Limit("user_day", Bucket.user("u42", "otp"), 10, 86400),
        Limit("ip_hour", Bucket.ip("198.51.100.7", "otp"), 50, 3600),
    ]
    issue = await count_round_trips(
        raw, lambda: rstore.issue_otp("u42", otp_record(clock.time()), limits, clock.time())
    )
    verify = await count_round_trips(
        raw, lambda: rstore.verify_otp("u42", "login", "c" * 64, clock.time())
    )
    assert [c.split()[0] for c in issue] == ["EVALSHA"]
    assert [c.split()[0] for c in verify] == ["EVALSHA"]


async def test_only_the_keyed_hash_is_stored_with_audit_fields_and_ttl(
    rstore: RedisStore, raw: aioredis.Redis, clock: FakeClock, key_prefix: str
) -> None:
    key = rstore.layout.otp("u42", "login")
    await rstore.issue_otp("u42", otp_record(clock.time()), [], clock.time())
    stored = await raw.hgetall(key)
    assert stored["code_hash"] == "c" * 64
    assert stored["client_ip"] == "198.51.100.7"
    assert stored["user_agent"] == "ua"
    assert stored["channel"] == "sms"
    assert 0 < await raw.pttl(key) <= 600_000


async def test_keys_carry_the_prefix_and_a_per_user_hash_tag(
    rstore: RedisStore, key_prefix: str
) -> None:
    otp_key = rstore.layout.otp("u42", "login")
    limit_key = rstore.layout.limit(Bucket.user("u42", "otp"), 3600)
    assert otp_key.startswith(key_prefix)
    tags = {re.search(r"\{([^}]*)\}", k).group(1) for k in (otp_key, limit_key)}  # type: ignore[union-attr]
    assert tags == {"u:u42"}


async def test_scripts_reload_after_script_flush(
    rstore: RedisStore, raw: aioredis.Redis, clock: FakeClock
) -> None:
    await raw.script_flush()
    assert await rstore.issue_otp("u7", otp_record(clock.time()), [], clock.time()) is None
    assert (await rstore.verify_otp("u7", "login", "c" * 64, clock.time())).result.verified


async def test_unreachable_redis_is_reported_as_unavailable() -> None:
    cfg = load_config(
        data={
            "store": {
                "backend": "redis",
                "redis_url": f"redis://127.0.0.1:{free_port()}/0",
                "socket_timeout_seconds": 0.5,
            }
        },
        env={},
    )
    with pytest.raises(UnavailableError):
        async with RedisStore(cfg.store):
            pass


async def test_store_cannot_be_opened_twice(rstore: RedisStore) -> None:
    with pytest.raises(RuntimeError, match="already open"):
        await rstore.__aenter__()


async def test_sms_otp_issue_costs_the_code_script_and_the_task_record_only(
    make_config: Callable[..., Config], raw: aioredis.Redis
) -> None:
    async with Otpd(make_config("redis")) as daemon:
        daemon.dispatcher.queue.hold_retries()  # no background reads: only the request shows
        trips = await count_round_trips(
            raw,
            lambda: daemon.otp.issue(
                user_id="u1", channel="sms", phone="+14155552671", client_ip="203.0.113.1"
            ),
        )
    # the guard's caps and range velocity ride in the issue script; the task record and
    # its stream entry are the second script
    assert [c.split()[0] for c in trips] == ["EVALSHA", "EVALSHA"]
    enqueue = hashlib.sha1(
        load_script("task_enqueue", shebang=True).encode(), usedforsecurity=False
    ).hexdigest()
    assert enqueue in trips[1]
