"""The TOTP operations of the store contract, on every backend: enrolment, the atomic
compare-and-set of the last accepted step, recovery codes and the failure lockout."""

from __future__ import annotations

import asyncio

import pytest

from otpd.clock import FakeClock
from otpd.errors import StoreDegradedError
from otpd.metrics import Metrics
from otpd.store.base import Bucket, Limit, Store, TotpCheck, TotpRecord
from tests.conftest import free_port
from tests.store.test_fallback import fallback_store

SEALED = "k1.c2VhbGVkLXNlY3JldA=="
LOCKOUT = Limit("totp_failures", Bucket.user("u1", "totp_fail"), 3, 900)


def pending_record(sealed: str = SEALED) -> TotpRecord:
    return TotpRecord(sealed_secret=sealed, algorithm="SHA1", digits=6, period=30)


async def enable(
    store: Store, clock: FakeClock, step: int = 100, recovery: tuple[str, ...] = ()
) -> None:
    now = clock.time()
    assert await store.totp_begin("u1", pending_record(), now + 600, now)
    outcome = await store.totp_check(
        "u1", SEALED, [step], LOCKOUT, "m", now, confirm=list(recovery)
    )
    assert outcome.check is TotpCheck.OK


async def test_a_pending_enrolment_is_not_enabled_until_confirmed(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    assert await store.totp_begin("u1", pending_record(), now + 600, now)
    assert await store.totp_get("u1", pending=True, now=now) == pending_record()
    assert await store.totp_get("u1", pending=False, now=now) is None
    missing = await store.totp_check("u1", SEALED, [5], LOCKOUT, "m", now)
    assert missing.check is TotpCheck.MISSING


async def test_confirming_enables_with_the_confirming_step_as_the_last_one(
    store: Store, clock: FakeClock
) -> None:
    await enable(store, clock, step=100)
    now = clock.time()
    assert await store.totp_get("u1", pending=True, now=now) is None
    record = await store.totp_get("u1", pending=False, now=now)
    assert record is not None
    assert record.last_step == 100
    assert record.sealed_secret == SEALED
    # the confirming code cannot be used again, an older one neither
    for steps in ([100], [99, 100]):
        again = await store.totp_check("u1", SEALED, steps, LOCKOUT, "m", now)
        assert again.check is TotpCheck.REPLAYED
    assert (await store.totp_check("u1", SEALED, [101], LOCKOUT, "m", now)).check is TotpCheck.OK
    after = await store.totp_get("u1", pending=False, now=now)
    assert after is not None
    assert after.last_step == 101


async def test_an_enabled_user_cannot_start_another_enrolment(
    store: Store, clock: FakeClock
) -> None:
    await enable(store, clock)
    now = clock.time()
    assert not await store.totp_begin("u1", pending_record("k1.other"), now + 600, now)
    kept = await store.totp_get("u1", pending=False, now=now)
    assert kept is not None
    assert kept.sealed_secret == SEALED


async def test_a_pending_enrolment_expires(store: Store, clock: FakeClock) -> None:
    now = clock.time()
    await store.totp_begin("u1", pending_record(), now + 600, now)
    clock.advance(600)
    now = clock.time()
    assert await store.totp_get("u1", pending=True, now=now) is None
    outcome = await store.totp_check("u1", SEALED, [5], LOCKOUT, "m", now, confirm=[])
    assert outcome.check is TotpCheck.MISSING


async def test_a_replaced_secret_is_changed_not_checked(store: Store, clock: FakeClock) -> None:
    await enable(store, clock)
    outcome = await store.totp_check("u1", "k1.stale", [200], LOCKOUT, "m", clock.time())
    assert outcome.check is TotpCheck.CHANGED


async def test_failures_lock_the_user_out_until_the_window_moves(
    store: Store, clock: FakeClock
) -> None:
    await enable(store, clock, step=100)
    for i in range(3):
        clock.advance(1)
        failed = await store.totp_check("u1", SEALED, [], LOCKOUT, f"m{i}", clock.time())
        assert failed.check is TotpCheck.INVALID
    locked = await store.totp_check("u1", SEALED, [200], LOCKOUT, "m9", clock.time())
    assert locked.check is TotpCheck.LOCKED
    assert 897 <= locked.retry_after <= 900
    # replays are not failures, and recovery codes share the lockout
    rec = await store.totp_use_recovery("u1", "h" * 64, LOCKOUT, "m10", clock.time())
    assert rec.check is TotpCheck.LOCKED
    clock.advance(900)
    assert (
        await store.totp_check("u1", SEALED, [200], LOCKOUT, "m11", clock.time())
    ).check is TotpCheck.OK


async def test_concurrent_checks_of_one_code_accept_it_exactly_once(
    store: Store, clock: FakeClock
) -> None:
    await enable(store, clock, step=100)
    now = clock.time()
    outcomes = await asyncio.gather(
        *(store.totp_check("u1", SEALED, [101], LOCKOUT, f"m{i}", now) for i in range(50))
    )
    checks = [o.check for o in outcomes]
    assert checks.count(TotpCheck.OK) == 1
    assert checks.count(TotpCheck.REPLAYED) == 49


async def test_recovery_codes_work_once_and_can_be_replaced(store: Store, clock: FakeClock) -> None:
    await enable(store, clock, recovery=("a" * 64, "b" * 64))
    now = clock.time()
    first = await store.totp_use_recovery("u1", "a" * 64, LOCKOUT, "m1", now)
    assert (first.check, first.remaining) == (TotpCheck.OK, 1)
    again = await store.totp_use_recovery("u1", "a" * 64, LOCKOUT, "m2", now)
    assert again.check is TotpCheck.INVALID
    assert await store.totp_set_recovery("u1", ["c" * 64])
    old = await store.totp_use_recovery("u1", "b" * 64, LOCKOUT, "m3", now)
    assert old.check is TotpCheck.INVALID
    new = await store.totp_use_recovery("u1", "c" * 64, LOCKOUT, "m4", now)
    assert (new.check, new.remaining) == (TotpCheck.OK, 0)


async def test_concurrent_uses_of_one_recovery_code_accept_it_once(
    store: Store, clock: FakeClock
) -> None:
    lockout = Limit("totp_failures", Bucket.user("u1", "totp_fail"), 100, 900)
    await enable(store, clock, recovery=("a" * 64, "b" * 64))
    now = clock.time()
    outcomes = await asyncio.gather(
        *(store.totp_use_recovery("u1", "a" * 64, lockout, f"m{i}", now) for i in range(20))
    )
    assert [o.check for o in outcomes].count(TotpCheck.OK) == 1


async def test_delete_removes_everything_and_says_whether_it_was_enabled(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    assert not await store.totp_delete("u1")
    assert not await store.totp_set_recovery("u1", ["c" * 64])
    missing = await store.totp_use_recovery("u1", "c" * 64, LOCKOUT, "m", now)
    assert missing.check is TotpCheck.MISSING
    await enable(store, clock, recovery=("a" * 64,))
    assert await store.totp_delete("u1")
    assert await store.totp_get("u1", pending=False, now=now) is None
    gone = await store.totp_use_recovery("u1", "a" * 64, LOCKOUT, "m", now)
    assert gone.check is TotpCheck.MISSING
    assert await store.totp_begin("u1", pending_record(), now + 600, now)


async def test_totp_never_falls_back_to_the_local_store(key_prefix: str, clock: FakeClock) -> None:
    """A local copy could accept a code another instance accepted already: 503 instead."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with fallback_store(url, key_prefix, clock, Metrics()) as store:
        assert store.degraded
        now = clock.time()
        with pytest.raises(StoreDegradedError):
            await store.totp_begin("u1", pending_record(), now + 600, now)
        with pytest.raises(StoreDegradedError):
            await store.totp_get("u1", pending=False, now=now)
        with pytest.raises(StoreDegradedError):
            await store.totp_check("u1", SEALED, [1], LOCKOUT, "m", now)
        with pytest.raises(StoreDegradedError):
            await store.totp_use_recovery("u1", "a" * 64, LOCKOUT, "m", now)
        with pytest.raises(StoreDegradedError):
            await store.totp_set_recovery("u1", [])
        with pytest.raises(StoreDegradedError):
            await store.totp_delete("u1")
