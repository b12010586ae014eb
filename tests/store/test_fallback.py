"""``store.fallback = "memory"``: a real redis-server stopped and started again on the same
port while a :class:`FallbackStore` serves; what the local store took stays answerable,
what only Redis may answer is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from otpd.clock import FakeClock
from otpd.config import load_config
from otpd.errors import StoreDegradedError, UnavailableError
from otpd.metrics import Metrics
from otpd.models import Channel, TaskRecord, TaskStatus, VerifyReason
from otpd.store import ClaimState, StoreDeps, create_store
from otpd.store.fallback import FallbackStore
from otpd.store.memory import MemoryStore
from otpd.store.redis import RedisStore
from tests.conftest import RestartableRedis
from tests.store.test_contract import record
from tests.store.test_tokens import RESET
from tests.store.test_tokens import record as token


def fallback_store(url: str, key_prefix: str, clock: FakeClock, metrics: Metrics) -> FallbackStore:
    config = load_config(
        data={
            "store": {
                "backend": "redis",
                "redis_url": url,
                "key_prefix": key_prefix,
                "socket_timeout_seconds": 0.5,
            }
        },
        env={},
    ).store
    primary = RedisStore(config, metrics=metrics)
    local = MemoryStore(key_prefix=key_prefix, clock=clock)
    return FallbackStore(primary, local, clock=clock, metrics=metrics, probe_seconds=0.05)


@pytest.fixture
async def store(
    restartable_redis: RestartableRedis, key_prefix: str, clock: FakeClock
) -> AsyncIterator[FallbackStore]:
    async with fallback_store(restartable_redis.url, key_prefix, clock, Metrics()) as made:
        yield made


async def restored(store: FallbackStore, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while store.degraded:
            await asyncio.sleep(0.02)


def degraded_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("otpd_store_degraded")


def task(task_id: str, now: float) -> TaskRecord:
    return TaskRecord(task_id, Channel.EMAIL, TaskStatus.QUEUED, "otp_code", now, now)


async def raw_exists(url: str, key: str) -> bool:
    raw = aioredis.Redis.from_url(url)
    try:
        return bool(await raw.exists(key))
    finally:
        await raw.aclose()


def test_the_registry_wraps_redis_in_a_fallback_only_when_configured(key_prefix: str) -> None:
    deps = StoreDeps(clock=FakeClock(), metrics=Metrics())
    for fallback, kind in (("memory", FallbackStore), ("none", RedisStore)):
        config = load_config(data={"store": {"backend": "redis", "fallback": fallback}}, env={})
        assert type(create_store("redis", config.store, deps)) is kind
    config = load_config(data={"store": {"backend": "memory", "fallback": "memory"}}, env={})
    assert type(create_store("memory", config.store, deps)) is MemoryStore


async def test_an_outage_moves_codes_to_the_local_store_with_one_warning_and_the_gauge(
    restartable_redis: RestartableRedis, key_prefix: str, clock: FakeClock
) -> None:
    metrics = Metrics()
    async with fallback_store(restartable_redis.url, key_prefix, clock, metrics) as store:
        now = clock.time()
        assert not store.degraded
        assert degraded_gauge(metrics) == 0
        restartable_redis.stop()
        with capture_logs() as logs:
            for user in ("u1", "u2", "u3"):
                assert await store.issue_otp(user, record(now), [], now) is None
            outcome = await store.verify_otp("u1", "login", "h" * 64, now)
        assert outcome.result.verified
        assert store.degraded
        assert store.reason.startswith("the store is unavailable: Connection"), store.reason
        assert degraded_gauge(metrics) == 1
        warnings = [e for e in logs if e["event"] == "store.degraded"]
        assert len(warnings) == 1, logs  # one line when it starts, not one per call
        assert warnings[0]["operation"] == "issue_otp"

        restartable_redis.start()
        with capture_logs() as logs:
            await restored(store)
        assert [e["event"] for e in logs].count("store.restored") == 1
        assert degraded_gauge(metrics) == 0
        assert store.reason == ""


async def test_a_code_issued_during_the_outage_verifies_after_it_and_new_codes_live_in_redis(
    store: FallbackStore, restartable_redis: RestartableRedis, clock: FakeClock
) -> None:
    now = clock.time()
    restartable_redis.stop()
    await store.issue_otp("u1", record(now, "a" * 64), [], now)
    await store.issue_otp("u2", record(now, "b" * 64), [], now)
    restartable_redis.start()
    await restored(store)

    # the outage's codes answer from the local store, wrong attempts counted there
    wrong = await store.verify_otp("u1", "login", "x" * 64, now)
    assert (wrong.result.reason, wrong.result.attempts_left) == (VerifyReason.INVALID_CODE, 2)
    assert (await store.verify_otp("u1", "login", "a" * 64, now)).result.verified
    # new codes go to Redis, and one for the same key supersedes the local code
    await store.issue_otp("u2", record(now, "c" * 64), [], now)
    await store.issue_otp("u3", record(now, "d" * 64), [], now)
    assert isinstance(store.primary, RedisStore)
    for user in ("u2", "u3"):
        assert await raw_exists(restartable_redis.url, store.primary.layout.otp(user, "login"))
    assert not (await store.verify_otp("u2", "login", "b" * 64, now)).result.verified
    assert (await store.verify_otp("u2", "login", "c" * 64, now)).result.verified
    assert (await store.verify_otp("u3", "login", "d" * 64, now)).result.verified
    # and the superseded local code is gone for good, even in the next outage
    restartable_redis.stop()
    gone = await store.verify_otp("u2", "login", "b" * 64, now)
    assert gone.result.reason is VerifyReason.NO_ACTIVE_CODE


async def test_a_code_superseded_during_the_outage_never_verifies_again(
    store: FallbackStore, restartable_redis: RestartableRedis, clock: FakeClock
) -> None:
    now = clock.time()
    await store.issue_otp("u1", record(now, "p" * 64), [], now)  # in Redis
    restartable_redis.stop()
    await store.issue_otp("u1", record(now, "l" * 64), [], now)  # replaces it, locally
    assert (await store.verify_otp("u1", "login", "l" * 64, now)).result.verified
    restartable_redis.start()
    await restored(store)
    # Redis still holds the older code, but it was replaced: it must not come back
    late = await store.verify_otp("u1", "login", "p" * 64, now)
    assert late.result.reason is VerifyReason.NO_ACTIVE_CODE
    # once the local code's lifetime is over, the key is the primary's again
    clock.advance(601)
    later = clock.time()
    await store.issue_otp("u1", record(later, "n" * 64), [], later)
    assert (await store.verify_otp("u1", "login", "n" * 64, later)).result.verified


async def test_limits_count_locally_during_the_outage(
    store: FallbackStore, restartable_redis: RestartableRedis, clock: FakeClock
) -> None:
    from otpd.store import Bucket, Limit

    now = clock.time()
    limit = Limit("user_hour", Bucket.user("u1", "otp"), 2, 3600)
    await store.hit_limits([limit], "m0", now)  # one hit in Redis
    restartable_redis.stop()
    assert await store.hit_limits([limit], "m1", now) is None
    assert await store.hit_limits([limit], "m2", now) is None  # Redis's hit is not seen
    refused = await store.hit_limits([limit], "m3", now)
    assert refused is not None and refused.scope == "user_hour"


async def test_the_budget_counter_never_falls_back(
    store: FallbackStore, restartable_redis: RestartableRedis
) -> None:
    assert await store.capped_add("sms_spend:d", 5, 10, 60) == (True, 5.0)
    restartable_redis.stop()
    for _ in range(2):  # the failing call itself, then refused at once
        with pytest.raises(StoreDegradedError):
            await store.capped_add("sms_spend:d", 1, 10, 60)
    assert store.degraded
    restartable_redis.start()
    await restored(store)
    # Redis restarted empty: the counter starts again, in Redis only
    assert await store.capped_add("sms_spend:d", 1, 10, 60) == (True, 1.0)


async def test_tasks_recorded_during_the_outage_are_read_and_written_locally(
    store: FallbackStore, restartable_redis: RestartableRedis, clock: FakeClock
) -> None:
    now = clock.time()
    await store.put_task(task("tsk_in_redis", now), 3600)
    restartable_redis.stop()
    await store.put_task(task("tsk_local", now), 3600)
    assert store.degraded
    local = task("tsk_local", now)
    local.status = TaskStatus.SENT
    await store.update_task(local)
    found = await store.get_task("tsk_local")
    assert found is not None and found.status is TaskStatus.SENT
    # a record only Redis holds is neither read ("no such task" would be a guess) nor
    # written elsewhere (the write would be lost): the caller retries later
    with pytest.raises(UnavailableError):
        await store.get_task("tsk_in_redis")
    with pytest.raises(UnavailableError):
        await store.update_task(task("tsk_in_redis", now))
    restartable_redis.start()
    await restored(store)
    found = await store.get_task("tsk_local")
    assert found is not None and found.status is TaskStatus.SENT
    # Redis came back empty: its record is gone, nothing invents it
    assert await store.get_task("tsk_in_redis") is None


async def test_a_link_token_issued_during_the_outage_confirms_after_it(
    store: FallbackStore, restartable_redis: RestartableRedis, clock: FakeClock
) -> None:
    now = clock.time()
    await store.issue_token("ref1", token(now, "p" * 64), [], now)  # in Redis
    restartable_redis.stop()
    await store.issue_token("ref1", token(now, "l" * 64), [], now)
    checked = await store.use_token("ref1", RESET, "l" * 64, now, consume=False)
    assert checked.record is not None
    restartable_redis.start()
    await restored(store)
    old = await store.use_token("ref1", RESET, "p" * 64, now, consume=True)
    assert old.record is None  # superseded during the outage
    used = await store.use_token("ref1", RESET, "l" * 64, now, consume=True)
    assert used.record is not None
    again = await store.use_token("ref1", RESET, "l" * 64, now, consume=True)
    assert again.record is None


async def test_an_idempotency_claim_made_during_the_outage_holds_on_this_instance(
    store: FallbackStore, restartable_redis: RestartableRedis
) -> None:
    restartable_redis.stop()
    assert (await store.claim("messages", "k1", "fp", 60)).state is ClaimState.CLAIMED
    await store.settle("messages", "k1", "fp", "tsk_1", 600)
    restartable_redis.start()
    await restored(store)
    replay = await store.claim("messages", "k1", "fp", 60)
    assert (replay.state, replay.value) == (ClaimState.SETTLED, "tsk_1")
    # a claim released during an outage frees the key for Redis again
    restartable_redis.stop()
    assert (await store.claim("messages", "k2", "fp", 60)).state is ClaimState.CLAIMED
    await store.release("messages", "k2", "fp")
    restartable_redis.start()
    await restored(store)
    assert (await store.claim("messages", "k2", "fp", 60)).state is ClaimState.CLAIMED
    assert isinstance(store.primary, RedisStore)
    assert await raw_exists(
        restartable_redis.url, store.primary.layout.remembered("messages", "k2")
    )


async def test_it_opens_with_redis_down_and_opens_redis_once_it_answers(
    tmp_path: Path, key_prefix: str, clock: FakeClock
) -> None:
    server = RestartableRedis(tmp_path)  # nothing listens there yet
    metrics = Metrics()
    try:
        with capture_logs() as logs:
            async with fallback_store(server.url, key_prefix, clock, metrics) as store:
                assert store.degraded
                assert degraded_gauge(metrics) == 1
                assert "cannot reach the store" in store.reason
                assert str(urlsplit(server.url).port) in store.reason
                now = clock.time()
                await store.issue_otp("u1", record(now, "a" * 64), [], now)
                await store.ping()  # answers: the local store serves
                await asyncio.sleep(0.2)  # a few failed probes: still one warning
                server.start()
                await restored(store)
                assert (await store.verify_otp("u1", "login", "a" * 64, now)).result.verified
                await store.issue_otp("u2", record(now), [], now)
                assert isinstance(store.primary, RedisStore)
                assert await raw_exists(server.url, store.primary.layout.otp("u2", "login"))
        assert [e["event"] for e in logs].count("store.degraded") == 1
        assert [e["event"] for e in logs].count("store.restored") == 1
    finally:
        server.stop()
