"""One suite, every backend: the memory store and any registered one must behave exactly
like Redis."""

from __future__ import annotations

import asyncio
import re

import pytest

from otpd.clock import FakeClock
from otpd.errors import UnavailableError
from otpd.models import Channel, Message, TaskRecord, TaskStatus, VerifyReason
from otpd.store.base import (
    AuditDraft,
    Bucket,
    Claim,
    ClaimState,
    Limit,
    LimitExceeded,
    OtpRecord,
    Store,
    Suppressed,
    Suppression,
    VerifyOutcome,
    verify_audit_fields,
)
from otpd.store.memory import MemoryStore
from otpd.store.reports import PARKED_MAX, ReportOutcome, TaskReport
from tests.conftest import ConfigFactory


def record(
    now: float,
    code_hash: str = "h" * 64,
    ttl: float = 600,
    max_attempts: int = 3,
    purpose: str = "login",
) -> OtpRecord:
    return OtpRecord(
        otp_id=f"otp_{now}",
        code_hash=code_hash,
        channel="email",
        purpose=purpose,
        created_at=now,
        expires_at=now + ttl,
        max_attempts=max_attempts,
        client_ip="203.0.113.9",
        user_agent="pytest",
    )


async def test_correct_code_verifies_once_then_is_gone(store: Store, clock: FakeClock) -> None:
    assert await store.issue_otp("u1", record(clock.time()), [], clock.time()) is None
    first = await store.verify_otp("u1", "login", "h" * 64, clock.time())
    second = await store.verify_otp("u1", "login", "h" * 64, clock.time())
    assert first.result.verified
    assert first.otp_id == f"otp_{clock.time()}"
    assert second.result.reason is VerifyReason.NO_ACTIVE_CODE


async def test_wrong_codes_count_down_then_even_the_right_code_is_refused(
    store: Store, clock: FakeClock
) -> None:
    await store.issue_otp("u1", record(clock.time(), max_attempts=3), [], clock.time())
    lefts = [
        (await store.verify_otp("u1", "login", "x" * 64, clock.time())).result for _ in range(3)
    ]
    assert [(r.reason, r.attempts_left) for r in lefts] == [
        (VerifyReason.INVALID_CODE, 2),
        (VerifyReason.INVALID_CODE, 1),
        (VerifyReason.INVALID_CODE, 0),
    ]
    dead = await store.verify_otp("u1", "login", "h" * 64, clock.time())
    assert dead.result.reason is VerifyReason.TOO_MANY_ATTEMPTS
    assert not dead.result.verified


async def test_a_verify_keeps_its_audit_record_with_the_outcome_in_the_same_step(
    store: Store, clock: FakeClock
) -> None:
    """Every outcome (verified, a wrong code, too many attempts, no code) is kept with the
    fields verify_audit_fields names, on top of what the caller knew before."""
    now = clock.time()
    await store.issue_otp("u1", record(now, max_attempts=1), [], now)
    await store.issue_otp("u2", record(now), [], now)

    async def verify(user: str, code_hash: str) -> VerifyOutcome:
        draft = AuditDraft(
            {"at": "t", "user_id": user, "client_ip": "203.0.113.9"}, user, now, 60_000
        )
        return await store.verify_otp(user, "login", code_hash, now, draft)

    outcomes = [
        ("u1", await verify("u1", "x" * 64)),  # wrong: the last attempt
        ("u1", await verify("u1", "h" * 64)),  # too many attempts, the right code or not
        ("u2", await verify("u2", "h" * 64)),  # verified
        ("u2", await verify("u2", "h" * 64)),  # consumed: no active code
    ]
    reasons = [o.result.reason for _, o in outcomes]
    assert reasons == [
        VerifyReason.INVALID_CODE,
        VerifyReason.TOO_MANY_ATTEMPTS,
        None,
        VerifyReason.NO_ACTIVE_CODE,
    ]
    for user in ("u1", "u2"):
        kept, _ = await store.audit_events(user, None, None, None, 10, None)
        mine = [o for u, o in outcomes if u == user]
        assert [{k: v for k, v in e.items() if k != "id"} for e in reversed(kept)] == [
            {"at": "t", "user_id": user, "client_ip": "203.0.113.9", **verify_audit_fields(o)}
            for o in mine
        ]
    assert verify_audit_fields(outcomes[2][1])["event"] == "otp_verified"
    assert verify_audit_fields(outcomes[0][1])["attempts_left"] == "0"
    assert verify_audit_fields(outcomes[3][1]).get("otp_id") is None  # nothing was found


async def test_an_issue_keeps_its_audit_record_only_when_the_code_is_stored(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()

    def draft(user: str, otp_id: str) -> AuditDraft:
        fields = {"event": "otp_issued", "at": "t", "user_id": user, "otp_id": otp_id}
        return AuditDraft(fields, user, now, 60_000)

    lim = Limit("user_hour", Bucket.user("a1", "otp"), 1, 3600)
    first = record(now)
    assert await store.issue_otp("a1", first, [lim], now, audit=draft("a1", first.otp_id)) is None
    again = record(now)
    refused = await store.issue_otp("a1", again, [lim], now, audit=draft("a1", again.otp_id))
    assert isinstance(refused, LimitExceeded)
    await store.suppress("hash-a2", Suppression("a***@example.com", "bounce", "api", now), 0)
    blocked = record(now)
    outcome = await store.issue_otp(
        "a2", blocked, [], now, unless_suppressed=["hash-a2"], audit=draft("a2", blocked.otp_id)
    )
    assert outcome == Suppressed(0)
    kept, _ = await store.audit_events("a1", None, None, None, 10, None)
    assert [{k: v for k, v in e.items() if k != "id"} for e in kept] == [
        {"event": "otp_issued", "at": "t", "user_id": "a1", "otp_id": first.otp_id}
    ]
    assert await store.audit_events("a2", None, None, None, 10, None) == ([], None)


async def test_expired_code_is_no_active_code(store: Store, clock: FakeClock) -> None:
    await store.issue_otp("u1", record(clock.time(), ttl=60), [], clock.time())
    clock.advance(60)
    outcome = await store.verify_otp("u1", "login", "h" * 64, clock.time())
    assert outcome.result.reason is VerifyReason.NO_ACTIVE_CODE


async def test_new_code_replaces_the_previous_one_and_resets_attempts(
    store: Store, clock: FakeClock
) -> None:
    await store.issue_otp("u1", record(clock.time(), code_hash="a" * 64), [], clock.time())
    await store.verify_otp("u1", "login", "x" * 64, clock.time())
    await store.issue_otp("u1", record(clock.time(), code_hash="b" * 64), [], clock.time())
    old = await store.verify_otp("u1", "login", "a" * 64, clock.time())
    assert old.result.reason is VerifyReason.INVALID_CODE
    assert old.result.attempts_left == 2
    assert (await store.verify_otp("u1", "login", "b" * 64, clock.time())).result.verified


async def test_codes_of_different_purposes_and_users_are_independent(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    await store.issue_otp("u1", record(now, "a" * 64), [], now)
    await store.issue_otp("u1", record(now, "b" * 64, purpose="reset"), [], now)
    await store.issue_otp("u2", record(now, "c" * 64), [], now)
    assert (await store.verify_otp("u1", "reset", "b" * 64, now)).result.verified
    assert (await store.verify_otp("u2", "login", "c" * 64, now)).result.verified
    assert (await store.verify_otp("u1", "login", "a" * 64, now)).result.verified


async def test_limit_allows_exactly_n_in_the_window_and_reports_when_to_retry(
    store: Store, clock: FakeClock
) -> None:
    lim = Limit("user_hour", Bucket.user("u1", "otp"), 3, 3600)
    for i in range(3):
        assert await store.hit_limits([lim], f"m{i}", clock.time()) is None
        clock.advance(100)
    refused = await store.hit_limits([lim], "m3", clock.time())
    assert refused is not None
    assert refused.scope == "user_hour"
    # the oldest hit was 300 s ago: it leaves the window in 3300 s
    assert refused.retry_after == pytest.approx(3300, abs=0.01)
    clock.advance(3300)
    assert await store.hit_limits([lim], "m4", clock.time()) is None


async def test_refused_hits_are_not_counted(store: Store, clock: FakeClock) -> None:
    lim = Limit("s", Bucket.shared("x"), 1, 60)
    assert await store.hit_limits([lim], "a", clock.time()) is None
    for i in range(5):
        assert await store.hit_limits([lim], f"r{i}", clock.time()) is not None
    clock.advance(60)
    assert await store.hit_limits([lim], "b", clock.time()) is None


async def test_limits_are_all_or_nothing(store: Store, clock: FakeClock) -> None:
    loose = Limit("loose", Bucket.shared("loose"), 10, 60)
    tight = Limit("tight", Bucket.shared("tight"), 1, 60)
    assert await store.hit_limits([tight], "t", clock.time()) is None
    refused = await store.hit_limits([loose, tight], "both", clock.time())
    assert refused is not None and refused.scope == "tight"
    # the loose limit did not count the refused hit: 10 more fit
    for i in range(10):
        assert await store.hit_limits([loose], f"l{i}", clock.time()) is None
    assert await store.hit_limits([loose], "over", clock.time()) is not None


async def test_distinct_limit_counts_members_not_hits(store: Store, clock: FakeClock) -> None:
    lim = Limit("range", Bucket.shared("range"), 2, 600, distinct=True)
    assert await store.hit_limits([lim], "n1", clock.time()) is None
    assert await store.hit_limits([lim], "n2", clock.time()) is None
    assert await store.hit_limits([lim], "n1", clock.time()) is None  # seen: passes
    refused = await store.hit_limits([lim], "n3", clock.time())
    assert refused is not None and refused.scope == "range"


async def test_issue_refused_by_a_limit_keeps_the_previous_code(
    store: Store, clock: FakeClock
) -> None:
    lim = Limit("user_hour", Bucket.user("u1", "otp"), 1, 3600)
    now = clock.time()
    assert await store.issue_otp("u1", record(now, "a" * 64), [lim], now) is None
    refused = await store.issue_otp("u1", record(now, "b" * 64), [lim], now)
    assert isinstance(refused, LimitExceeded) and refused.scope == "user_hour"
    assert (await store.verify_otp("u1", "login", "a" * 64, now)).result.verified


async def test_capped_add_stops_at_the_cap(store: Store) -> None:
    key = "spend:2026-11-22"
    added, total = await store.capped_add(key, 0.4, 1.0, 3600)
    assert added
    assert total == pytest.approx(0.4)
    added, total = await store.capped_add(key, 0.5, 1.0, 3600)
    assert added
    assert total == pytest.approx(0.9)
    added, total = await store.capped_add(key, 0.2, 1.0, 3600)
    assert not added
    assert total == pytest.approx(0.9)
    assert (await store.capped_add(key, 0.1, 1.0, 3600))[0]


async def test_task_records_round_trip_and_update(store: Store, clock: FakeClock) -> None:
    rec = TaskRecord(
        task_id="tsk_" + "0" * 24,
        channel=Channel.SMS,
        status=TaskStatus.QUEUED,
        tag="otp_code",
        created_at=clock.time(),
        updated_at=clock.time(),
    )
    await store.put_task(rec, 3600)
    rec.status, rec.attempts, rec.provider, rec.last_error = TaskStatus.SENT, 2, "console", ""
    rec.updated_at = clock.time() + 5
    await store.update_task(rec)
    got = await store.get_task(rec.task_id)
    assert got == rec
    assert await store.get_task("tsk_" + "1" * 24) is None


def sent_task(clock: FakeClock, message_id: str = "SM1") -> TaskRecord:
    now = clock.time()
    return TaskRecord(
        task_id="tsk_" + "2" * 24,
        channel=Channel.SMS,
        status=TaskStatus.SENT,
        tag="otp_code",
        created_at=now,
        updated_at=now,
        attempts=1,
        provider="twilio",
        provider_message_id=message_id,
    )


def report(status: TaskStatus, event: str, at: float, message_id: str = "SM1") -> TaskReport:
    return TaskReport(message_id, event, status, "" if status.value == "delivered" else "30003", at)


async def test_reports_apply_once_in_any_order_and_never_weaken_a_status(
    store: Store, clock: FakeClock
) -> None:
    rec = sent_task(clock)
    await store.put_task(rec, 3600)
    t = clock.time()
    delivered = report(TaskStatus.DELIVERED, "e1", t + 1)
    assert await store.report_task(rec.task_id, delivered) is ReportOutcome.APPLIED
    assert await store.report_task(rec.task_id, delivered) is ReportOutcome.DUPLICATE
    got = await store.get_task(rec.task_id)
    assert got is not None
    assert (got.status, got.delivered_at, got.reason) == (TaskStatus.DELIVERED, t + 1, "")
    bounced = report(TaskStatus.BOUNCED, "e2", t + 2)
    assert await store.report_task(rec.task_id, bounced) is ReportOutcome.APPLIED
    # a late "delivered" (another event id) never turns "bounced" back
    late = report(TaskStatus.DELIVERED, "e3", t + 3)
    assert await store.report_task(rec.task_id, late) is ReportOutcome.STALE
    got = await store.get_task(rec.task_id)
    assert got is not None
    assert (got.status, got.reason, got.updated_at) == (TaskStatus.BOUNCED, "30003", t + 2)
    # a report about another message of the task (it was sent again) changes nothing
    other = report(TaskStatus.COMPLAINED, "e4", t + 4, message_id="SM2")
    assert await store.report_task(rec.task_id, other) is ReportOutcome.OTHER_MESSAGE
    gone = report(TaskStatus.DELIVERED, "e5", t)
    assert await store.report_task("tsk_" + "3" * 24, gone) is ReportOutcome.GONE


async def test_suppressions_are_read_in_order_replaced_and_lifted(store: Store) -> None:
    bounce = Suppression("a***@example.com", "bounce", "webhook", 1_700_000_000.5)
    manual = Suppression("+4477******23", "manual", "api", 1_700_000_001.0)
    assert await store.suppressions([]) == []
    assert await store.suppressions(["h1", "h2"]) == [None, None]
    await store.suppress("h1", bounce, 0)
    await store.suppress("h2", manual, 3600)
    assert await store.suppressions(["h2", "h3", "h1"]) == [manual, None, bounce]
    again = Suppression("a***@example.com", "complaint", "webhook", 1_700_000_002.0)
    await store.suppress("h1", again, 0)
    assert await store.suppressions(["h1"]) == [again]
    assert await store.unsuppress("h1") is True
    assert await store.unsuppress("h1") is False
    assert await store.suppressions(["h1", "h2"]) == [None, manual]


async def test_a_suppression_with_a_ttl_expires(store: Store, clock: FakeClock) -> None:
    if not isinstance(store, MemoryStore):
        pytest.skip("real Redis expiry takes real seconds")
    await store.suppress("h1", Suppression("x", "bounce", "api", clock.time()), 60)
    await store.suppress("h2", Suppression("y", "bounce", "api", clock.time()), 0)
    clock.advance(61)
    assert await store.suppressions(["h1", "h2"]) == [
        None,
        Suppression("y", "bounce", "api", clock.time() - 61),
    ]


async def test_a_report_before_the_link_is_parked_and_handed_over_once(store: Store) -> None:
    assert await store.message_task("ref1", "ev1", "sealed-1", 600) is None
    assert await store.message_task("ref1", "ev1", "sealed-1", 600) is None  # a repeat
    assert await store.message_task("ref1", "ev2", "sealed-2", 600) is None
    assert sorted(await store.link_message("ref1", "tsk_a", 600)) == ["sealed-1", "sealed-2"]
    assert await store.message_task("ref1", "ev3", "sealed-3", 600) == "tsk_a"
    assert await store.link_message("ref1", "tsk_a", 600) == []
    assert await store.message_task("ref2", "ev1", "x", 600) is None


async def test_parked_reports_of_one_message_are_capped(store: Store) -> None:
    for i in range(PARKED_MAX + 5):
        await store.message_task("ref1", f"ev{i}", f"sealed-{i}", 600)
    assert len(await store.link_message("ref1", "tsk_a", 600)) <= PARKED_MAX


FP_A, FP_B = "a" * 64, "b" * 64


async def test_a_claim_is_pending_then_settled_with_its_value(store: Store) -> None:
    assert (await store.claim("messages", "k1", FP_A, 60)).state is ClaimState.CLAIMED
    assert await store.claim("messages", "k1", FP_B, 60) == Claim(ClaimState.PENDING, FP_A)
    await store.settle("messages", "k1", FP_A, "tsk_1", 600)
    assert await store.claim("messages", "k1", FP_A, 60) == Claim(ClaimState.SETTLED, FP_A, "tsk_1")
    assert await store.claim("messages", "k1", FP_B, 60) == Claim(ClaimState.SETTLED, FP_A, "tsk_1")
    # scopes and refs are independent names
    assert (await store.claim("other", "k1", FP_B, 60)).state is ClaimState.CLAIMED
    assert (await store.claim("messages", "k2", FP_B, 60)).state is ClaimState.CLAIMED


async def test_a_released_claim_can_be_claimed_again(store: Store) -> None:
    await store.claim("messages", "k1", FP_A, 60)
    await store.release("messages", "k1", FP_A)
    assert (await store.claim("messages", "k1", FP_B, 60)).state is ClaimState.CLAIMED


async def test_only_the_holder_of_a_pending_claim_settles_or_releases_it(store: Store) -> None:
    await store.claim("messages", "k1", FP_A, 60)
    await store.settle("messages", "k1", FP_B, "tsk_b", 600)
    await store.release("messages", "k1", FP_B)
    assert await store.claim("messages", "k1", FP_B, 60) == Claim(ClaimState.PENDING, FP_A)
    # a settled claim is not released by its holder either
    await store.settle("messages", "k1", FP_A, "tsk_a", 600)
    await store.release("messages", "k1", FP_A)
    assert (await store.claim("messages", "k1", FP_A, 60)).value == "tsk_a"


async def test_of_concurrent_claims_exactly_one_holds_it(store: Store) -> None:
    claims = await asyncio.gather(
        *(store.claim("messages", "k", f"{i:064x}", 60) for i in range(20))
    )
    held = [c for c in claims if c.state is ClaimState.CLAIMED]
    assert len(held) == 1
    assert {c.state for c in claims} == {ClaimState.CLAIMED, ClaimState.PENDING}
    assert len({c.fingerprint for c in claims if c.state is ClaimState.PENDING}) == 1


async def test_a_pending_claim_lapses_after_its_ttl(
    store: Store, clock: FakeClock, backend: str
) -> None:
    """A request that died holding a claim frees the key once its lease ends; the settled
    value then lives for its own, longer TTL."""

    async def later() -> None:
        clock.advance(1.1)
        if backend in ("redis", "fallback", "cluster", "sentinel"):
            await asyncio.sleep(1.1)  # Redis counts a TTL on its own clock

    await store.claim("messages", "k1", FP_A, 1)
    await later()
    assert (await store.claim("messages", "k1", FP_B, 1)).state is ClaimState.CLAIMED
    await store.settle("messages", "k1", FP_B, "tsk_b", 600)
    await later()
    assert (await store.claim("messages", "k1", FP_A, 1)).value == "tsk_b"


async def test_a_registered_backend_serves_a_whole_daemon(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    from otpd.app import Otpd
    from tests.store.conftest import WrappedStore

    wrapped = WrappedStore(MemoryStore(clock=clock))
    async with Otpd(make_config(), clock=clock, store=wrapped) as daemon:
        captured: list[str] = []
        enqueue = daemon.dispatcher.enqueue

        async def capture(message: Message, *, task_id: str | None = None) -> TaskRecord:
            captured.append(message.text)
            return await enqueue(message, task_id=task_id)

        daemon.dispatcher.enqueue = capture  # type: ignore[method-assign]
        await daemon.otp.issue(user_id="u1", channel="email", email="a@example.com")
        code = re.search(r"\b(\d{6})\b", captured[0])
        assert code is not None
        assert (await daemon.otp.verify(user_id="u1", code=code.group(1))).verified
    assert daemon.store is wrapped
    assert wrapped.calls >= 4  # issue, task record, verify, and the delivery's status writes


async def test_a_closed_store_fails_its_ping(store: Store) -> None:
    await store.ping()
    await store.aclose()
    with pytest.raises(UnavailableError):
        await store.ping()


# ---------------------------------------------------------------------- audit records

DAY_MS = 86_400_000


def audit(event: str, n: int = 0) -> dict[str, str]:
    return {"event": event, "at": f"t{n}", "recipient": "j***@example.com"}


async def test_audit_records_come_back_newest_first_per_user(
    store: Store, clock: FakeClock
) -> None:
    ids = []
    for n, event in enumerate(("otp_issued", "otp_failed", "otp_verified")):
        ids.append(await store.append_audit(audit(event, n), "u1", DAY_MS, clock.time()))
        clock.advance(1)
    await store.append_audit(audit("otp_issued"), "u2", DAY_MS, clock.time())
    await store.append_audit(audit("api_unauthorized"), None, DAY_MS, clock.time())

    events, cursor = await store.audit_events("u1", None, None, None, 100, None)
    assert [e["event"] for e in events] == ["otp_verified", "otp_failed", "otp_issued"]
    assert [e["id"] for e in events] == ids[::-1]
    assert events[0] == {"id": ids[2], **audit("otp_verified", 2)}
    assert cursor is None
    assert [e["event"] for e in (await store.audit_events("u2", None, None, None, 9, None))[0]] == [
        "otp_issued"
    ]
    (no_user,), _ = await store.audit_events(None, None, None, None, 9, None)
    assert no_user["event"] == "api_unauthorized"
    assert (await store.audit_events("nobody", None, None, None, 9, None)) == ([], None)


async def test_audit_ids_grow_within_a_millisecond_and_when_the_clock_steps_back(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    ids = [await store.append_audit(audit("otp_failed", n), "u1", DAY_MS, now) for n in range(3)]
    ids.append(await store.append_audit(audit("otp_failed", 3), "u1", DAY_MS, now - 60))
    keys = [tuple(int(p) for p in i.split("-")) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 4
    assert keys[0][0] == round(now * 1000)
    events, _ = await store.audit_events("u1", None, None, None, 10, None)
    assert [e["at"] for e in events] == ["t3", "t2", "t1", "t0"]


async def test_audit_pages_follow_the_cursor_to_the_end(store: Store, clock: FakeClock) -> None:
    for n in range(5):
        await store.append_audit(audit("otp_failed", n), "u1", DAY_MS, clock.time())
        clock.advance(1)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        events, cursor = await store.audit_events("u1", None, None, None, 2, cursor)
        pages += 1
        seen += [e["at"] for e in events]
        if cursor is None:
            break
        assert cursor == events[-1]["id"]
    assert seen == ["t4", "t3", "t2", "t1", "t0"]
    assert pages == 3
    # exactly a page's worth left: no cursor to an empty page
    events, cursor = await store.audit_events("u1", None, None, None, 5, None)
    assert len(events) == 5 and cursor is None


async def test_audit_queries_filter_by_event_and_time(store: Store, clock: FakeClock) -> None:
    start = clock.time()
    for n in range(6):
        event = "otp_failed" if n % 2 else "otp_issued"
        await store.append_audit(audit(event, n), "u1", DAY_MS, clock.time())
        clock.advance(10)
    failed, cursor = await store.audit_events("u1", "otp_failed", None, None, 100, None)
    assert [e["at"] for e in failed] == ["t5", "t3", "t1"] and cursor is None
    page, cursor = await store.audit_events("u1", "otp_failed", None, None, 2, None)
    assert [e["at"] for e in page] == ["t5", "t3"] and cursor == page[-1]["id"]
    rest, cursor = await store.audit_events("u1", "otp_failed", None, None, 2, cursor)
    assert [e["at"] for e in rest] == ["t1"] and cursor is None
    # since and until are inclusive, in seconds
    ranged, _ = await store.audit_events("u1", None, start + 10, start + 30, 100, None)
    assert [e["at"] for e in ranged] == ["t3", "t2", "t1"]
    assert (await store.audit_events("u1", None, start + 31, start + 39, 100, None))[0] == []


async def test_audit_records_past_the_retention_are_trimmed(store: Store, clock: FakeClock) -> None:
    retention_ms = 3_600_000
    await store.append_audit(audit("otp_issued", 0), "u1", retention_ms, clock.time())
    clock.advance(1800)
    await store.append_audit(audit("otp_failed", 1), "u1", retention_ms, clock.time())
    clock.advance(1801)  # the first is now older than the retention, the second is not
    await store.append_audit(audit("otp_verified", 2), "u1", retention_ms, clock.time())
    events, _ = await store.audit_events("u1", None, None, None, 100, None)
    assert [e["at"] for e in events] == ["t2", "t1"]


async def test_a_suppressed_recipient_refuses_the_issue_and_counts_nothing(
    store: Store, clock: FakeClock
) -> None:
    now = clock.time()
    lim = Limit("user_hour", Bucket.user("u1", "otp"), 1, 3600)
    await store.suppress("h-phone", Suppression("+4*****67", "opt_out", "webhook", now), 0)
    refused = await store.issue_otp(
        "u1", record(now, "a" * 64), [lim], now, unless_suppressed=["h-mail", "h-phone"]
    )
    assert refused == Suppressed(1)
    # neither the code nor the limit was touched: the next request still has its one hit
    assert (await store.verify_otp("u1", "login", "a" * 64, now)).otp_id == ""
    assert (
        await store.issue_otp("u1", record(now), [lim], now, unless_suppressed=["h-mail"]) is None
    )
