"""The memory store's own promises: every limit answer is the one limits.lua gives (times
that tie or step back, members seen again, retry-after, all or nothing), a limit costs
the same however full its window is, and memory comes back once every TTL has passed."""

from __future__ import annotations

import dataclasses
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from otpd.clock import FakeClock
from otpd.config import load_config
from otpd.models import VerifyReason
from otpd.store.base import Bucket, Limit, LimitExceeded, OtpRecord, Store, Suppressed
from otpd.store.memory import _FREE_PER_OP, MemoryStore, _Code
from otpd.store.redis import RedisStore

HOUR, DAY = 3600, 86400


def code(i: int, now: float, ttl: float = 600, code_hash: str = "h" * 64) -> OtpRecord:
    return OtpRecord(
        otp_id=f"otp_{i:024d}",
        code_hash=code_hash,
        channel="email",
        purpose="login",
        created_at=now,
        expires_at=now + ttl,
        max_attempts=3,
        client_ip="203.0.113.9",
        user_agent="pytest",
    )


def user_limits(user_id: str, *, short: bool = False) -> list[Limit]:
    """The per-user OTP limits of a user, as the limit policy builds them; ``short``
    windows (30 and 60 s) for tests that wait them out."""
    bucket = Bucket.user(user_id, "otp")
    return [
        Limit("user_hour", bucket, 5, 30 if short else HOUR),
        Limit("user_day", bucket, 10, 60 if short else DAY),
    ]


def shared_limits(*, short: bool = False) -> list[Limit]:
    """Two limits every call hits, like the email per-recipient and global limits."""
    return [
        Limit("email_global_hour", Bucket.shared("email_send"), 10**9, 30 if short else HOUR),
        Limit("sms_global_day", Bucket.shared("sms_guard"), 10**9, 60 if short else DAY),
    ]


def keys_held(store: MemoryStore) -> int:
    return len(store._data)


@pytest.fixture
async def mem(clock: FakeClock) -> AsyncIterator[MemoryStore]:
    async with MemoryStore(clock=clock) as store:
        yield store


# ---------------------------------------------------------------------- exact answers


async def test_hits_at_the_same_time_all_count_and_leave_the_window_together(
    mem: MemoryStore, clock: FakeClock
) -> None:
    lim = Limit("same", Bucket.shared("same"), 3, 60)
    t = clock.time()
    for member in ("a", "b", "c"):
        assert await mem.hit_limits([lim], member, t) is None
    assert await mem.hit_limits([lim], "d", t) == LimitExceeded("same", 60.0)
    assert await mem.hit_limits([lim], "d", t + 59.999) == LimitExceeded("same", 0.001)
    for member in ("d", "e", "f"):
        assert await mem.hit_limits([lim], member, t + 60) is None
    assert await mem.hit_limits([lim], "g", t + 60) == LimitExceeded("same", 60.0)


async def test_a_clock_stepped_back_keeps_hits_in_time_order_not_arrival_order(
    mem: MemoryStore, clock: FakeClock
) -> None:
    lim = Limit("back", Bucket.shared("back"), 3, 100)
    t = clock.time()
    assert await mem.hit_limits([lim], "m1", t + 10) is None
    assert await mem.hit_limits([lim], "m2", t + 5) is None  # the clock went back 5 s
    assert await mem.hit_limits([lim], "m3", t + 20) is None
    # the oldest hit is m2 at t+5 (in arrival order it would be m1 at t+10: 80)
    assert await mem.hit_limits([lim], "m4", t + 30) == LimitExceeded("back", 75.0)
    assert await mem.hit_limits([lim], "m4", t + 25) == LimitExceeded("back", 80.0)
    # m2 leaves at t+105, m1 (t+10) is then the oldest
    assert await mem.hit_limits([lim], "m4", t + 105) is None
    assert await mem.hit_limits([lim], "m5", t + 105) == LimitExceeded("back", 5.0)
    # a call stamped before every hit it sees waits longer than the window, as on Redis
    assert await mem.hit_limits([lim], "m5", t + 110) is None
    assert await mem.hit_limits([lim], "m6", t + 9) == LimitExceeded("back", 111.0)


async def test_a_distinct_member_seen_again_passes_and_moves_to_its_new_time(
    mem: MemoryStore, clock: FakeClock
) -> None:
    lim = Limit("range", Bucket.address("r", "sms_range"), 2, 100, distinct=True)
    t = clock.time()
    assert await mem.hit_limits([lim], "n1", t) is None
    assert await mem.hit_limits([lim], "n2", t + 10) is None
    assert await mem.hit_limits([lim], "n1", t + 50) is None  # seen: passes, now at t+50
    # the oldest is n2 at t+10, not n1's first hit at t (that would say 40)
    assert await mem.hit_limits([lim], "n3", t + 60) == LimitExceeded("range", 50.0)
    assert await mem.hit_limits([lim], "n3", t + 105) == LimitExceeded("range", 5.0)
    assert await mem.hit_limits([lim], "n3", t + 110) is None
    assert await mem.hit_limits([lim], "n2", t + 120) == LimitExceeded("range", 30.0)
    assert await mem.hit_limits([lim], "n1", t + 120) is None


async def test_a_distinct_limit_counts_its_own_member_not_the_calls(
    mem: MemoryStore, clock: FakeClock
) -> None:
    def number(n: str) -> Limit:
        return Limit("range", Bucket.address("r", "sms_range"), 1, 100, True, member=n)

    t = clock.time()
    assert await mem.hit_limits([number("n1")], "sms_1", t) is None
    assert await mem.hit_limits([number("n1")], "sms_2", t + 1) is None
    assert await mem.hit_limits([number("n2")], "sms_1", t + 2) == LimitExceeded("range", 99.0)


async def test_the_same_member_again_counts_once_on_a_plain_limit_too(
    mem: MemoryStore, clock: FakeClock
) -> None:
    # ZADD moves a member already in the set, whatever the limit
    lim = Limit("plain", Bucket.shared("plain"), 2, 100)
    t = clock.time()
    assert await mem.hit_limits([lim], "a", t) is None
    assert await mem.hit_limits([lim], "a", t + 10) is None
    assert await mem.hit_limits([lim], "b", t + 20) is None
    assert await mem.hit_limits([lim], "c", t + 30) == LimitExceeded("plain", 80.0)


async def test_retry_after_is_when_the_hit_count_minus_limit_from_the_oldest_leaves(
    mem: MemoryStore, clock: FakeClock
) -> None:
    # two limits on one key (same bucket and window): the tight one sees 5 hits for 2
    loose = Limit("loose", Bucket.shared("k"), 5, 100)
    tight = Limit("tight", Bucket.shared("k"), 2, 100)
    t = clock.time()
    for i in range(5):
        assert await mem.hit_limits([loose], f"m{i}", t + i) is None
    # ZRANGE key 3 3: the hit at t+3 (the oldest would say 90, the newest 94)
    assert await mem.hit_limits([tight], "x", t + 10) == LimitExceeded("tight", 93.0)
    assert await mem.hit_limits([loose], "x", t + 10) == LimitExceeded("loose", 90.0)
    assert await mem.hit_limits([loose, tight], "x", t + 10) == LimitExceeded("tight", 93.0)


async def test_the_longest_retry_wins_and_the_first_limit_on_a_tie(
    mem: MemoryStore, clock: FakeClock
) -> None:
    first = Limit("first", Bucket.shared("t1"), 1, 50)
    second = Limit("second", Bucket.shared("t2"), 1, 50)
    longer = Limit("longer", Bucket.shared("t3"), 1, 80)
    t = clock.time()
    assert await mem.hit_limits([first, second, longer], "a", t) is None
    assert await mem.hit_limits([first, second], "b", t + 10) == LimitExceeded("first", 40.0)
    assert await mem.hit_limits([second, first], "b", t + 10) == LimitExceeded("second", 40.0)
    refused = await mem.hit_limits([first, longer, second], "b", t + 10)
    assert refused == LimitExceeded("longer", 70.0)


async def test_an_issue_refused_by_a_tight_limit_counts_on_no_limit_and_stores_nothing(
    mem: MemoryStore, clock: FakeClock
) -> None:
    loose = Limit("loose", Bucket.shared("loose"), 10, 60)
    tight = Limit("tight", Bucket.user("u1", "otp"), 1, 60)
    t = clock.time()
    assert await mem.issue_otp("u1", code(1, t, code_hash="a" * 64), [loose, tight], t) is None
    refused = await mem.issue_otp("u1", code(2, t, code_hash="b" * 64), [loose, tight], t + 1)
    assert refused == LimitExceeded("tight", 59.0)
    # the refused call counted nothing on the loose limit: 9 more fit, not 8
    for i in range(9):
        assert await mem.hit_limits([loose], f"l{i}", t + 1) is None
    assert await mem.hit_limits([loose], "over", t + 1) is not None
    kept = await mem.verify_otp("u1", "login", "a" * 64, t + 1)
    assert (kept.result.verified, kept.otp_id) == (True, code(1, t).otp_id)


async def test_times_count_in_milliseconds_as_the_redis_store_sends_them(
    mem: MemoryStore, clock: FakeClock
) -> None:
    lim = Limit("ms", Bucket.shared("ms"), 1, 10)
    t = clock.time()
    assert await mem.hit_limits([lim], "a", t + 0.0004) is None  # counted at t
    assert await mem.hit_limits([lim], "b", t + 5.0002) == LimitExceeded("ms", 5.0)
    assert await mem.hit_limits([lim], "b", t + 10) is None


async def test_a_limit_that_allows_nothing_fails_like_the_script(
    mem: MemoryStore, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="at least one hit"):
        await mem.hit_limits([Limit("none", Bucket.shared("n"), 0, 60)], "a", clock.time())


def test_a_stored_code_keeps_every_field_of_its_record() -> None:
    rec = code(7, 1_800_000_000.0)
    assert _Code.of(rec)._asdict() == {**dataclasses.asdict(rec), "attempts": 0}


# ---------------------------------------------------------------------- same as Redis


Call = tuple[int, list[Limit], str, float]


def _traffic(seed: int, steps: int) -> list[Call]:
    """Calls for both stores: shared keys read by two limits, distinct limits with the
    call's member and their own, members seen again, equal times and steps back."""
    rng = random.Random(seed)
    shared_a = Bucket.shared("a")
    templates = [
        Limit("a3", shared_a, 3, 20),
        Limit("a5", shared_a, 5, 20),  # the same key as a3
        Limit("b2", Bucket.shared("b"), 2, 15, distinct=True),
        Limit("b4", Bucket.shared("b"), 4, 30),
        Limit("u2", Bucket.user("u1", "otp"), 2, 12),
    ]
    # windows that grow past a scan of their members
    large = [
        Limit("c10", Bucket.shared("c"), 10, 40),
        Limit("d10", Bucket.shared("d"), 10, 40, distinct=True),
    ]
    steps_s = [0, 0, 0, 0.0004, 0.001, 0.3, 1, 2.5, 4, 9, -0.5, -2]
    out: list[Call] = []
    now = 1_800_000_000.0
    for i in range(steps):
        now += rng.choice(steps_s)
        if rng.random() < 0.4:
            limits = [rng.choice(large)]
        else:
            limits = rng.sample(templates, rng.randint(1, 3))
        if rng.random() < 0.3:
            number = f"n{rng.randint(1, 4)}"
            limits.append(Limit("range", Bucket.address("r", "rng"), 2, 18, True, number))
        # an issue counts its code's id; a hit one of a few members, so they come again
        member = "" if rng.random() < 0.3 else f"m{rng.randint(1, 20)}"
        out.append((i, limits, member, now))
    return out


async def _answers(store: Store, traffic: list[Call]) -> list[LimitExceeded | Suppressed | None]:
    answers: list[LimitExceeded | Suppressed | None] = []
    for i, limits, member, now in traffic:
        if member:
            answers.append(await store.hit_limits(limits, member, now))
        else:
            answers.append(await store.issue_otp(f"u{i}", code(i, now, ttl=30), limits, now))
    return answers


async def test_random_traffic_gets_exactly_the_answers_redis_gives(
    redis_url: str, key_prefix: str
) -> None:
    traffic = _traffic(seed=20261122, steps=1500)
    cfg = load_config(
        data={"store": {"backend": "redis", "redis_url": redis_url, "key_prefix": key_prefix}},
        env={},
    )
    # the store's clock stays put: only the scripts' windows decide, as on Redis, whose
    # key TTLs run in real time and outlast this test
    async with MemoryStore(clock=FakeClock(traffic[0][3])) as mem, RedisStore(cfg.store) as red:
        ours = await _answers(mem, traffic)
        theirs = await _answers(red, traffic)
    assert sum(a is not None for a in theirs) > 300  # plenty of refusals to compare
    differ = [
        (i, traffic[i], a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b
    ]
    assert differ == []


async def test_freeing_expired_keys_never_changes_an_answer() -> None:
    traffic = _traffic(seed=7, steps=3000)
    # time that only goes forward, as a system clock mostly does
    forward, now = [], traffic[0][3]
    for i, limits, member, _ in traffic:
        now += 0.7
        forward.append((i, limits, member, now))
    clock = FakeClock(traffic[0][3])
    kept = MemoryStore(clock=FakeClock(traffic[0][3]))  # its clock never passes a deadline
    freeing = MemoryStore(clock=clock)
    answers_kept: list[LimitExceeded | Suppressed | None] = []
    answers_freeing: list[LimitExceeded | Suppressed | None] = []
    for i, call in enumerate(forward):
        answers_kept += await _answers(kept, [call])
        clock.advance(call[3] - clock.time())
        answers_freeing += await _answers(freeing, [call])
        if i % 10 == 0:
            freeing.sweep()
    assert answers_freeing == answers_kept
    assert sum(a is not None for a in answers_kept) > 300
    assert keys_held(freeing) < keys_held(kept) / 10


# ---------------------------------------------------------------------- expiry


async def test_a_window_emptied_by_a_refused_call_is_deleted(
    mem: MemoryStore, clock: FakeClock
) -> None:
    lim = Limit("w", Bucket.shared("w"), 5, 60)
    full = Limit("full", Bucket.shared("full"), 1, 600)
    t = clock.time()  # the store's clock stays at t: no deadline passes
    assert await mem.hit_limits([lim, full], "a", t) is None
    assert keys_held(mem) == 2
    # at t+60 "a" leaves w and "full" refuses: nothing counts and w is left empty
    assert await mem.hit_limits([lim, full], "b", t + 60) == LimitExceeded("full", 540.0)
    assert keys_held(mem) == 1


async def test_codes_of_ongoing_traffic_are_freed_as_they_expire(
    mem: MemoryStore, clock: FakeClock
) -> None:
    most = 0
    for i in range(5000):
        assert await mem.issue_otp(f"u{i}", code(i, clock.time(), ttl=1), [], clock.time()) is None
        clock.advance(0.01)
        most = max(most, keys_held(mem))
    # a code lives 1 s and one is issued every 10 ms: about 100 are alive at any time
    assert most <= 101


async def test_operations_alone_free_every_expired_key(mem: MemoryStore, clock: FakeClock) -> None:
    for i in range(2000):
        now = clock.time()
        limits = user_limits(f"u{i}", short=True) + shared_limits(short=True)
        assert await mem.issue_otp(f"u{i}", code(i, now, ttl=60), limits, now) is None
    held = keys_held(mem)
    assert held == 3 * 2000 + 2
    clock.advance(60)
    for _ in range(held // _FREE_PER_OP + 1):
        await mem.ping()
    assert keys_held(mem) == 0
    assert mem._deadlines == []


async def test_sweep_frees_what_has_expired_and_keeps_the_rest(
    mem: MemoryStore, clock: FakeClock
) -> None:
    t = clock.time()
    lim = Limit("w", Bucket.shared("w"), 1, 100)
    assert await mem.hit_limits([lim], "a", t) is None
    for i in range(10):
        await mem.issue_otp(f"short{i}", code(i, t, ttl=10), [], t)
        await mem.issue_otp(f"long{i}", code(i, t, ttl=100), [], t)
    clock.advance(50)
    assert mem.sweep() == 10
    assert mem.sweep() == 0
    assert await mem.hit_limits([lim], "b", clock.time()) == LimitExceeded("w", 50.0)
    long = await mem.verify_otp("long3", "login", "h" * 64, clock.time())
    short = await mem.verify_otp("short3", "login", "h" * 64, clock.time())
    assert long.result.verified
    assert short.result.reason is VerifyReason.NO_ACTIVE_CODE


# ---------------------------------------------------------------------- cost


@pytest.mark.slow
@pytest.mark.timing
async def test_issuing_costs_the_same_with_100k_hits_in_the_shared_windows(
    mem: MemoryStore, clock: FakeClock
) -> None:
    """100,000 issues, each with a fresh user's limits and two shared limits every call
    hits; the last 10,000 must run at least a third as fast as the first 10,000 (a cost
    that grew with the hits held would be ten times slower by then; a core shared with
    another test worker can cost half). Rates are
    medians of 500-call batches in this process's CPU time: a full pass of the garbage
    collector (amortised O(1), but a 100 ms pause late in a run) or another process
    taking the CPU lands in one batch, not in the comparison."""
    total, batch = 100_000, 500
    rates: list[float] = []
    for start in range(0, total, batch):
        calls = []
        for i in range(start, start + batch):
            now = clock.time() + (i - start) * 0.001
            calls.append((f"u{i}", code(i, now, ttl=5), user_limits(f"u{i}") + shared_limits()))
        began = time.process_time()
        for user_id, rec, limits in calls:
            assert await mem.issue_otp(user_id, rec, limits, rec.created_at) is None
            clock.advance(0.001)
        rates.append(batch / (time.process_time() - began))
    segment = 10_000 // batch
    first, last = statistics.median(rates[:segment]), statistics.median(rates[-segment:])
    print(f"issue_otp ops/s: first 10k {first:,.0f}, last 10k {last:,.0f}, x{last / first:.2f}")
    assert last >= first / 3
    # the shared windows really held every hit: 100,000 of 100,000 refuses one more
    full = Limit("probe", Bucket.shared("email_send"), total, HOUR)
    assert await mem.hit_limits([full], "probe", clock.time()) is not None


@pytest.mark.slow
async def test_memory_comes_back_once_every_ttl_and_window_has_passed(
    mem: MemoryStore, clock: FakeClock
) -> None:
    total = 25_000
    shared = shared_limits(short=True)
    gc.collect()
    tracemalloc.start()
    try:
        await mem.issue_otp("warm", code(-1, clock.time(), ttl=60), [], clock.time())
        start = tracemalloc.get_traced_memory()[0]
        for i in range(total):
            now = clock.time()
            limits = [*user_limits(f"u{i}", short=True), *shared]
            assert await mem.issue_otp(f"u{i}", code(i, now, ttl=60), limits, now) is None
            clock.advance(0.0008)  # 20 s in all: every code and hit is still alive
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
        held = keys_held(mem)
        clock.advance(60)
        for _ in range(10):
            await mem.ping()
        freed = mem.sweep()
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    print(
        f"memory: grew {grown / 1e6:.1f} MB for {total:,} codes ({held:,} keys), "
        f"{left / 1e6:.3f} MB left ({100 * left / grown:.2f} %); the sweep freed {freed:,}"
    )
    assert held == 3 * total + 3
    assert keys_held(mem) == 0
    assert left <= 0.1 * grown
