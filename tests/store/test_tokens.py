"""Link tokens in the store: checked, consumed once, superseded, limited; on every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from otpd.clock import FakeClock
from otpd.store.base import Bucket, Limit, Store, TokenCheck, TokenRecord

VERIFY = "email_verification"
RESET = "password_reset"


def record(now: float, token_hash: str = "h" * 64, ttl: float = 3600, **kw: Any) -> TokenRecord:
    fields: dict[str, Any] = {
        "token_id": f"tok_{now}",
        "token_hash": token_hash,
        "purpose": RESET,
        "user_id": "u1",
        "email": "ada@example.com",
        "created_at": now,
        "expires_at": now + ttl,
        "client_ip": "203.0.113.9",
        "user_agent": "pytest",
    }
    fields.update(kw)
    return TokenRecord(**fields)


async def test_store_checks_without_consuming_and_confirm_consumes_once(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    assert await store.issue_token("ref1", record(now), [], now) is None
    for _ in range(2):
        checked = await store.use_token("ref1", RESET, "h" * 64, now, consume=False)
        assert checked.check is TokenCheck.OK
        assert checked.record == record(now)
    used = await store.use_token("ref1", RESET, "h" * 64, now, consume=True)
    assert used.check is TokenCheck.OK
    assert used.record is not None
    assert (used.record.user_id, used.record.email) == ("u1", "ada@example.com")
    again = await store.use_token("ref1", RESET, "h" * 64, now, consume=True)
    assert again == type(again)(TokenCheck.UNKNOWN)


async def test_store_refuses_a_wrong_hash_or_purpose_without_consuming(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    await store.issue_token("ref1", record(now), [], now)
    wrong = await store.use_token("ref1", RESET, "x" * 64, now, consume=True)
    assert (wrong.check, wrong.record, wrong.user_id) == (TokenCheck.MISMATCH, None, "u1")
    other = await store.use_token("ref1", VERIFY, "h" * 64, now, consume=True)
    assert other.check is TokenCheck.UNKNOWN  # another purpose is another record
    assert (
        await store.use_token("ref1", RESET, "h" * 64, now, consume=True)
    ).check is TokenCheck.OK


async def test_store_treats_a_token_at_its_expiry_as_expired_and_drops_it(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    await store.issue_token("ref1", record(now, ttl=60), [], now)
    clock.advance(59.5)
    assert (await store.use_token("ref1", RESET, "h" * 64, clock.time(), consume=False)).check is (
        TokenCheck.OK
    )
    clock.advance(0.5)
    expired = await store.use_token("ref1", RESET, "h" * 64, clock.time(), consume=True)
    assert (expired.check, expired.user_id) == (TokenCheck.EXPIRED, "u1")
    gone = await store.use_token("ref1", RESET, "h" * 64, clock.time(), consume=True)
    assert gone.check is TokenCheck.UNKNOWN


async def test_store_issue_replaces_the_previous_token_of_the_owner(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    await store.issue_token("ref1", record(now, "a" * 64), [], now)
    await store.issue_token("ref1", record(now + 1, "b" * 64), [], now + 1)
    old = await store.use_token("ref1", RESET, "a" * 64, now + 2, consume=True)
    assert old.check is TokenCheck.MISMATCH
    new = await store.use_token("ref1", RESET, "b" * 64, now + 2, consume=True)
    assert new.check is TokenCheck.OK


async def test_store_issue_counts_limits_and_stores_nothing_once_full(
    store: Store, clock: FakeClock
) -> None:
    limit = Limit("email_hour", Bucket.address("addr1", RESET), 2, 3600)
    now = clock.time()
    for i in range(2):
        rec = record(now + i, f"{i}" * 64, token_id=f"tok_{i}")
        assert await store.issue_token("ref1", rec, [limit], now + i) is None
    refused = await store.issue_token("ref1", record(now + 2, "9" * 64), [limit], now + 2)
    assert refused is not None
    assert refused.scope == "email_hour"
    assert refused.retry_after == pytest.approx(3600 - 2)
    # the refused issue left the live token alone
    assert (await store.use_token("ref1", RESET, "1" * 64, now + 3, consume=False)).check is (
        TokenCheck.OK
    )
    assert (await store.use_token("ref1", RESET, "9" * 64, now + 3, consume=False)).check is (
        TokenCheck.MISMATCH
    )


async def test_store_lets_exactly_one_of_many_concurrent_confirms_through(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    await store.issue_token("ref1", record(now), [], now)
    outcomes = await asyncio.gather(
        *(store.use_token("ref1", RESET, "h" * 64, now, consume=True) for _ in range(50))
    )
    assert sorted(o.check.value for o in outcomes) == ["ok"] + ["unknown"] * 49
