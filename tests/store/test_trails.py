"""The trail of a code issued with a fallback, on every backend: the fallback message is
handed out once, only for the first delivery's failure, only in time, never after the code
was verified."""

from __future__ import annotations

import asyncio

import pytest

from otpd.clock import FakeClock
from otpd.store.base import Store
from otpd.store.memory import MemoryStore
from otpd.store.trails import OtpTrail, TrailDelivery

SEALED = "k1.c2VhbGVkLWZhbGxiYWNr"
FALLBACK = TrailDelivery("email", "tsk_fallback", fallback=True)


def trail(now: float, otp_id: str = "otp_1", until: float = 30, ttl: float = 600) -> OtpTrail:
    return OtpTrail(
        otp_id=otp_id,
        created_at=now,
        expires_at=now + ttl,
        fallback_channel="email",
        fallback_until=now + until,
        deliveries=(TrailDelivery("sms", "tsk_first"),),
    )


async def test_a_trail_reads_back_as_it_was_written(store: Store, clock: FakeClock) -> None:
    await store.put_trail(trail(clock.time()), SEALED, 3600)
    assert await store.get_trail("otp_1") == trail(clock.time())
    assert await store.get_trail("otp_unknown") is None


async def test_the_first_deliverys_failure_takes_the_fallback_once(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    await store.put_trail(trail(now), SEALED, 3600)
    assert await store.take_fallback("otp_1", "tsk_first", FALLBACK, now + 1) == SEALED
    assert await store.take_fallback("otp_1", "tsk_first", FALLBACK, now + 2) is None
    found = await store.get_trail("otp_1")
    assert found is not None
    assert found.deliveries == (TrailDelivery("sms", "tsk_first"), FALLBACK)
    assert found.fell_back_at == now + 1


async def test_of_concurrent_takes_exactly_one_gets_the_fallback(
    store: Store, clock: FakeClock
) -> None:
    await store.put_trail(trail(clock.time()), SEALED, 3600)
    taken = await asyncio.gather(
        *(store.take_fallback("otp_1", "tsk_first", FALLBACK, clock.time()) for _ in range(8))
    )
    assert taken.count(SEALED) == 1
    assert taken.count(None) == 7


async def test_no_fallback_for_another_task_late_or_after_expiry(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    await store.put_trail(trail(now), SEALED, 3600)
    assert await store.take_fallback("otp_1", "tsk_fallback", FALLBACK, now) is None
    assert await store.take_fallback("otp_1", "tsk_first", FALLBACK, now + 30) is None
    await store.put_trail(trail(now, "otp_2", until=900, ttl=60), SEALED, 3600)
    assert await store.take_fallback("otp_2", "tsk_first", FALLBACK, now + 60) is None
    assert await store.take_fallback("otp_none", "tsk_first", FALLBACK, now) is None


async def test_a_verified_code_sends_no_fallback(store: Store, clock: FakeClock) -> None:
    now = clock.time()
    await store.put_trail(trail(now), SEALED, 3600)
    await store.trail_verified("otp_1", now + 1)
    await store.trail_verified("otp_1", now + 5)  # the first verification is kept
    await store.trail_verified("otp_none", now)  # no trail: nothing happens
    assert await store.take_fallback("otp_1", "tsk_first", FALLBACK, now + 2) is None
    found = await store.get_trail("otp_1")
    assert found is not None and found.verified_at == now + 1


async def test_a_trail_expires_with_its_ttl(store: Store, clock: FakeClock) -> None:
    if not isinstance(store, MemoryStore):
        pytest.skip("real Redis expiry takes real seconds")
    await store.put_trail(trail(clock.time()), SEALED, 60)
    clock.advance(61)
    assert await store.get_trail("otp_1") is None
