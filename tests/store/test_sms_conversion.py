"""The store's side of SMS conversion, on every backend: samples per number range, the
block they decide, listing and lifting blocks."""

from __future__ import annotations

from otpd.clock import FakeClock
from otpd.models import VerifyReason
from otpd.store.base import ConversionRule, OtpRecord, SmsBlock, Store

RULE = ConversionRule(window=3600, min_samples=20, min_conversion=0.2, block_seconds=43200)
SEALED = "k1.c2VhbGVk"  # what the caller sealed: the store keeps it as given


async def send(store: Store, clock: FakeClock, n: int, range_hash: str = "r1") -> None:
    for _ in range(n):
        assert await store.sms_sent(range_hash, SEALED, RULE, clock.time()) is None


async def test_range_is_blocked_once_min_samples_codes_went_unverified(
    store: Store, clock: FakeClock
) -> None:
    await send(store, clock, 20)
    now = clock.time()
    block = await store.sms_sent("r1", SEALED, RULE, now)
    assert block == SmsBlock("r1", SEALED, "low_conversion", now, now + 43200, 20, 0, fresh=True)
    clock.advance(10)
    again = await store.sms_sent("r1", "other", RULE, clock.time())
    assert again is not None and not again.fresh
    assert (again.sealed_prefix, again.blocked_at, again.sent) == (SEALED, now, 20)
    assert await store.sms_blocks(clock.time()) == [
        SmsBlock("r1", SEALED, "low_conversion", now, now + 43200, 20, 0)
    ]


async def test_verified_share_at_min_conversion_keeps_the_range_open(
    store: Store, clock: FakeClock
) -> None:
    for n in range(30):
        await send(store, clock, 1)
        if n % 5 == 0:  # 6 of 30: exactly 20 %
            await store.sms_verified("r1", clock.time(), RULE, clock.time())
    assert await store.sms_blocks(clock.time()) == []
    # one more unverified code puts it below 20 %
    await send(store, clock, 1)
    block = await store.sms_sent("r1", SEALED, RULE, clock.time())
    assert block is not None and (block.sent, block.verified) == (31, 6)


async def test_ranges_are_counted_apart(store: Store, clock: FakeClock) -> None:
    await send(store, clock, 20, "r1")
    await send(store, clock, 19, "r2")
    assert await store.sms_sent("r1", SEALED, RULE, clock.time()) is not None
    assert await store.sms_sent("r2", SEALED, RULE, clock.time()) is None
    assert [b.range_hash for b in await store.sms_blocks(clock.time())] == ["r1"]


async def test_block_expires_by_the_callers_clock(store: Store, clock: FakeClock) -> None:
    await send(store, clock, 20)
    assert await store.sms_sent("r1", SEALED, RULE, clock.time()) is not None
    clock.advance(43200)
    assert await store.sms_blocks(clock.time()) == []
    # the samples that decided the block went with it
    await send(store, clock, 20)


async def test_blocks_are_listed_soonest_to_expire_first(store: Store, clock: FakeClock) -> None:
    for range_hash in ("late", "early"):
        await send(store, clock, 20, range_hash)
    short = ConversionRule(3600, 20, 0.2, 600)
    assert await store.sms_sent("early", SEALED, short, clock.time()) is not None
    assert await store.sms_sent("late", SEALED, RULE, clock.time()) is not None
    assert [b.range_hash for b in await store.sms_blocks(clock.time())] == ["early", "late"]
    clock.advance(600)
    assert [b.range_hash for b in await store.sms_blocks(clock.time())] == ["late"]


async def test_unblock_lifts_the_block_and_forgets_the_samples(
    store: Store, clock: FakeClock
) -> None:
    await send(store, clock, 20)
    assert await store.sms_sent("r1", SEALED, RULE, clock.time()) is not None
    assert await store.sms_unblock("r1", clock.time())
    assert not await store.sms_unblock("r1", clock.time())
    assert not await store.sms_unblock("never", clock.time())
    assert await store.sms_blocks(clock.time()) == []
    await send(store, clock, 20)


async def test_unblocking_an_open_range_is_false_and_resets_its_samples(
    store: Store, clock: FakeClock
) -> None:
    await send(store, clock, 19)
    assert not await store.sms_unblock("r1", clock.time())
    await send(store, clock, 20)


async def test_samples_leave_the_window(store: Store, clock: FakeClock) -> None:
    await send(store, clock, 19)
    clock.advance(1800)
    await send(store, clock, 1)
    clock.advance(1800)  # the first 19 left the window, the 20th did not
    await send(store, clock, 19)
    assert await store.sms_sent("r1", SEALED, RULE, clock.time()) is not None


async def test_unsent_takes_a_code_back(store: Store, clock: FakeClock) -> None:
    await send(store, clock, 20)
    await store.sms_unsent("r1", RULE, clock.time())
    await send(store, clock, 1)
    assert await store.sms_sent("r1", SEALED, RULE, clock.time()) is not None


async def test_verification_of_a_code_issued_before_the_window_is_ignored(
    store: Store, clock: FakeClock
) -> None:
    issued = clock.time()
    await send(store, clock, 1)
    clock.advance(3600)
    await send(store, clock, 16)
    for _ in range(4):
        await store.sms_verified("r1", issued, RULE, clock.time())
    await send(store, clock, 4)
    block = await store.sms_sent("r1", SEALED, RULE, clock.time())
    assert block is not None and (block.sent, block.verified) == (20, 0)


async def test_verify_returns_what_the_code_was_issued_with(store: Store, clock: FakeClock) -> None:
    now = clock.time()
    record = OtpRecord(
        "otp_1", "h" * 64, "sms", "login", now, now + 600, 3, range_hash="r1", tracked=True
    )
    await store.issue_otp("u1", record, [], now)
    wrong = await store.verify_otp("u1", "login", "x" * 64, now)
    assert wrong.result.reason is VerifyReason.INVALID_CODE
    assert (wrong.range_hash, wrong.created_at, wrong.tracked) == ("r1", now, True)
    right = await store.verify_otp("u1", "login", "h" * 64, now)
    assert right.result.verified
    assert (right.otp_id, right.channel, right.range_hash, right.created_at, right.tracked) == (
        "otp_1",
        "sms",
        "r1",
        now,
        True,
    )
    plain = OtpRecord("otp_2", "h" * 64, "email", "login", now, now + 600, 3)
    await store.issue_otp("u1", plain, [], now)
    outcome = await store.verify_otp("u1", "login", "h" * 64, now)
    assert (outcome.range_hash, outcome.tracked) == ("", False)
