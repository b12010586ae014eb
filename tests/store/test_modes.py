"""The Redis store on a cluster and behind Sentinel: every script stays on one slot, limits
that span slots stay all-or-nothing, and single-use things stay single-use."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest

from otpd.clock import FakeClock
from otpd.config import load_config
from otpd.errors import UnavailableError
from otpd.models import VerifyReason
from otpd.store.base import Bucket, ClaimState, Limit, LimitExceeded, OtpRecord
from otpd.store.redis import RedisStore
from tests.redis_topologies import ClusterSetup, SentinelSetup


def record(otp_id: str, now: float) -> OtpRecord:
    return OtpRecord(otp_id, "h" * 64, "email", "login", now, now + 600, 3)


@pytest.fixture
async def cluster_store(
    redis_cluster_env: ClusterSetup, key_prefix: str
) -> AsyncIterator[RedisStore]:
    config = load_config(
        data={
            "store": {
                "backend": "redis",
                "mode": "cluster",
                "redis_url": redis_cluster_env.seed_url,
                "key_prefix": key_prefix,
            }
        },
        env={},
    )
    async with RedisStore(config.store) as store:
        yield store


@pytest.fixture
async def sentinel_store(
    redis_sentinel_env: SentinelSetup, key_prefix: str
) -> AsyncIterator[RedisStore]:
    config = load_config(
        data={
            "store": {
                "backend": "redis",
                "mode": "sentinel",
                "sentinel_urls": list(redis_sentinel_env.sentinel_urls),
                "sentinel_service": redis_sentinel_env.service,
                "key_prefix": key_prefix,
            }
        },
        env={},
    )
    async with RedisStore(config.store) as store:
        yield store


def otp_limits(user: str, ip: str, address: str) -> list[Limit]:
    """User, IP and recipient limits: three hash tags, three slots on a cluster."""
    return [
        Limit("user_hour", Bucket.user(user, "otp"), 5, 3600),
        Limit("ip_hour", Bucket.ip(ip, "otp"), 7, 3600),
        Limit("email_recipient_hour", Bucket.address(address, "email_send"), 100, 3600),
    ]


async def test_concurrent_issues_across_slots_accept_exactly_the_user_limit(
    cluster_store: RedisStore, clock: FakeClock
) -> None:
    now = clock.time()
    limits = otp_limits("u1", "198.51.100.1", "a" * 64)
    results = await asyncio.gather(
        *(cluster_store.issue_otp("u1", record(f"otp_{i}", now), limits, now) for i in range(20))
    )
    assert sum(r is None for r in results) == 5
    # (while they race, a reservation on the IP limit that is given back a moment later can
    # refuse another request: the window over-counts, it never under-counts)
    # the refused issues gave back what they had counted on the IP and recipient limits:
    # two more users fit under the IP limit of 7, the third is refused by it
    others = [
        await cluster_store.issue_otp(
            user, record(f"otp_{user}", now), otp_limits(user, "198.51.100.1", "b" * 64), now
        )
        for user in ("u2", "u3", "u4")
    ]
    assert others[:2] == [None, None]
    assert isinstance(others[2], LimitExceeded) and others[2].scope == "ip_hour"


async def test_a_code_verifies_once_under_concurrency_on_a_cluster(
    cluster_store: RedisStore, clock: FakeClock
) -> None:
    now = clock.time()
    assert await cluster_store.issue_otp("u9", record("otp_9", now), [], now) is None
    outcomes = await asyncio.gather(
        *(cluster_store.verify_otp("u9", "login", "h" * 64, now) for _ in range(50))
    )
    assert sum(o.result.verified for o in outcomes) == 1
    assert {o.result.reason for o in outcomes if not o.result.verified} == {
        VerifyReason.NO_ACTIVE_CODE
    }


async def test_the_store_works_behind_sentinel(
    sentinel_store: RedisStore, clock: FakeClock
) -> None:
    now = clock.time()
    limits = otp_limits("s1", "198.51.100.9", "c" * 64)
    assert await sentinel_store.issue_otp("s1", record("otp_s1", now), limits, now) is None
    outcome = await sentinel_store.verify_otp("s1", "login", "h" * 64, now)
    assert outcome.result.verified


async def test_a_write_no_replica_acknowledged_is_a_503_behind_sentinel(
    sentinel_store: RedisStore, redis_sentinel_env: SentinelSetup, clock: FakeClock
) -> None:
    """Each write waits for a replica (WAIT, same round trip): one that only the primary
    holds would be lost by a failover, so it is refused instead of confirmed."""
    now = clock.time()
    limits = otp_limits("s2", "198.51.100.10", "e" * 64)
    replica = redis_sentinel_env.replica.process
    replica.send_signal(signal.SIGSTOP)  # alive for the sentinels, silent for the primary
    try:
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            await sentinel_store.issue_otp("s2", record("otp_s2", now), limits, now)
        with pytest.raises(UnavailableError):
            await sentinel_store.claim("issue", "s2-key", "f" * 16, 60)
        waited = time.monotonic() - started
    finally:
        replica.send_signal(signal.SIGCONT)
    timeout = sentinel_store.config.replica_ack_timeout_seconds
    assert 2 * timeout <= waited < 2 * timeout + 1.0, waited
    # replicated again: the same writes are confirmed, the refused claim left nothing
    claim = await sentinel_store.claim("issue", "s2-key", "f" * 16, 60)
    assert claim.state is ClaimState.CLAIMED
    assert await sentinel_store.issue_otp("s2", record("otp_s2", now), limits, now) is None
    assert (await sentinel_store.verify_otp("s2", "login", "h" * 64, now)).result.verified


async def test_more_concurrent_operations_than_connections_wait_for_one_on_a_cluster(
    redis_cluster_env: ClusterSetup, key_prefix: str, clock: FakeClock
) -> None:
    """The cluster client's node pools refuse past their size; the store waits instead."""
    config = load_config(
        data={
            "store": {
                "backend": "redis",
                "mode": "cluster",
                "redis_url": redis_cluster_env.seed_url,
                "key_prefix": key_prefix,
                "max_connections": 4,
            }
        },
        env={},
    )
    now = clock.time()
    async with RedisStore(config.store) as store:
        results = await asyncio.gather(
            *(
                store.issue_otp(
                    f"w{i}",
                    record(f"otp_w{i}", now),
                    otp_limits(f"w{i}", f"198.51.100.{i}", "d" * 64),
                    now,
                )
                for i in range(100)
            )
        )
    assert results == [None] * 100
