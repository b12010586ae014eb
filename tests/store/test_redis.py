"""Redis-only properties: round trips, key layout, what is (not) stored, failure mapping."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import Config, load_config
from otpd.errors import UnavailableError
from otpd.models import Channel, OtpIssued, TaskRecord, TaskStatus
from otpd.store.base import Bucket, Limit, OtpRecord, QueuedTask
from otpd.store.redis import RedisStore
from otpd.store.redis.streams import TaskStreams
from otpd.totp import hotp, time_step
from tests.conftest import free_port, outbox_files, redis_server

T = TypeVar("T")


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


async def _issue_trips(daemon: Otpd, raw: aioredis.Redis, **request: str) -> list[str]:
    """The commands one issue sends, and what the trail writes after it (nothing: the
    issue script keeps the record, so none is pending when the issue returns)."""
    daemon.dispatcher.queue.hold_retries()  # no background reads: only the request shows
    answered: list[int] = []

    async def issue() -> None:
        await daemon.otp.issue(user_id="u1", client_ip="203.0.113.1", **request)
        answered.append(len(daemon.audit._pending))
        await daemon.audit.flush()

    trips = await count_round_trips(raw, issue)
    assert answered == [0]
    return trips


async def test_an_email_otp_issue_is_one_script_with_its_task_and_its_audit_record(
    make_config: Callable[..., Config], raw: aioredis.Redis
) -> None:
    async with Otpd(make_config("redis")) as daemon:
        trips = await _issue_trips(daemon, raw, channel="email", email="ada@example.com")
        (kept,), _ = await daemon.audit.events(user_id="u1")
    # the limits, the suppression list, the code, the task record and its stream entry,
    # and the audit record
    assert [c.split()[0] for c in trips] == ["EVALSHA"]
    (issue,) = trips
    assert ":supp:{s:" in issue and ":otp:{u:u1}:" in issue
    assert ":task:{q:" in issue and ":ready" in issue
    assert "audit:{u:u1}" in issue
    assert kept["event"] == "otp_issued" and kept["recipient"] == "a***@example.com"
    assert kept["task_id"].startswith("tsk_") and kept["client_ip"] == "203.0.113.1"


async def test_sms_otp_issue_costs_the_conversion_count_then_the_same_one_script(
    make_config: Callable[..., Config], raw: aioredis.Redis
) -> None:
    async with Otpd(make_config("redis")) as daemon:
        trips = await _issue_trips(daemon, raw, channel="sms", phone="+14155552671")
    # the range's conversion sample is counted (or its block found) first; the guard's
    # caps and range velocity ride in the issue script with everything else
    assert [c.split()[0] for c in trips] == ["EVALSHA", "EVALSHA"]
    conversion, issue = trips
    assert ":conv:{sms}:" in conversion
    assert ":otp:{u:u1}:" in issue and ":task:{q:" in issue and ":rl:{" in issue
    assert "audit:{u:u1}" in issue


async def issued_apart(config: Config, user_id: str, email: str) -> tuple[OtpIssued, str]:
    """An email code issued by an API-only daemon on ``config`` (nothing delivered yet),
    and the id of its task."""
    async with Otpd(config, role="api") as api:
        issued = await api.otp.issue(user_id=user_id, channel="email", email=email)
    (delivery,) = issued.deliveries
    return issued, delivery.task_id


async def watched_worker(
    raw: aioredis.Redis, config: Config, body: Callable[[Otpd], Awaitable[T]]
) -> tuple[list[str], T]:
    """The round trips of a worker daemon opened while MONITOR already watches (so that a
    delivery starting as the daemon opens is not missed), and what ``body`` gave back while
    the daemon was open."""
    result: list[T] = []

    async def run() -> None:
        async with Otpd(config, role="worker") as worker:
            result.append(await body(worker))

    trips = await count_round_trips(raw, run)
    return trips, result[0]


async def until_final(daemon: Otpd, task_ids: list[str]) -> list[TaskRecord]:
    """The records of ``task_ids`` once each is sent or failed (within 10 s)."""
    async with asyncio.timeout(10):
        while True:
            records = [await daemon.tasks.get(t) for t in task_ids]
            if all(r.status in (TaskStatus.FAILED, TaskStatus.SENT) for r in records):
                return records
            await asyncio.sleep(0.02)


async def test_a_delivery_checks_its_recipients_suppression_in_its_start_script(
    make_config: Callable[..., Config], raw: aioredis.Redis
) -> None:
    config = make_config("redis", dispatch={"durable": True})
    async with Otpd(config, role="api") as api:
        held = await api.otp.issue(user_id="u1", channel="email", email="ada@example.com")
        sent = await api.otp.issue(user_id="u2", channel="email", email="bob@example.com")
        # suppressed after the code was accepted, before its delivery
        await api.suppressions.add("Ada@example.com", "complaint", source="webhook")
    task_ids = [held.deliveries[0].task_id, sent.deliveries[0].task_id]

    async def deliver(worker: Otpd) -> tuple[list[TaskRecord], list[dict[str, str]]]:
        records = await until_final(worker, task_ids)
        events, _ = await worker.audit.events(user_id="u1", event="message_failed")
        return records, events

    trips, ([failed, delivered_record], [refusal]) = await watched_worker(raw, config, deliver)
    assert (refusal["reason"], refusal["task_id"]) == ("suppressed", task_ids[0])
    assert failed.status is TaskStatus.FAILED and failed.last_error == "suppressed: complaint"
    assert failed.attempts == 0  # no attempt was recorded: nothing reached a provider
    assert delivered_record.status is TaskStatus.SENT
    assert [p.read_text().count("bob@example.com") > 0 for p in outbox_files(config, ".eml")] == [
        True
    ]
    # the list was read by the attempt's start script only: no read of its own
    suppression_reads = [c for c in trips if ":supp:{s:" in c]
    assert suppression_reads and all(c.startswith("EVALSHA") for c in suppression_reads)


async def test_a_deliverys_audit_record_is_kept_by_its_final_status_script(
    make_config: Callable[..., Config], raw: aioredis.Redis
) -> None:
    config = make_config("redis", dispatch={"durable": True})
    issued, task_id = await issued_apart(config, "u3", "cy@example.com")

    async def deliver(worker: Otpd) -> list[dict[str, str]]:
        await until_final(worker, [task_id])
        assert worker.audit._pending == []  # nothing left for the trail to write
        events, _ = await worker.audit.events(user_id="u3")
        return events

    trips, events = await watched_worker(raw, config, deliver)
    # the record went with the final status, the acknowledgement and the body's removal
    # (the test's own read of the trail is the one XREVRANGE)
    (written,) = [c for c in trips if "audit:{u:u3}" in c and not c.startswith("XREVRANGE")]
    assert written.startswith("EVALSHA") and ":task:{q:" in written and "message_sent" in written
    sent, issue = events
    assert (sent["event"], issue["event"]) == ("message_sent", "otp_issued")
    assert sent["task_id"] == task_id and sent["recipient"] == "c***@example.com"
    assert (sent["otp_id"], sent["attempts"]) == (issued.otp_id, "1")
    assert "cy@example.com" not in written


async def test_a_final_status_written_again_after_a_failure_keeps_one_audit_record(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("redis", dispatch={"durable": True})
    _, task_id = await issued_apart(config, "u4", "di@example.com")
    real = TaskStreams.finish
    calls: list[bool] = []

    async def refused_once(self: TaskStreams, *args: Any, **kwargs: Any) -> bool:
        calls.append(kwargs.get("audit") is not None)
        if len(calls) == 1:  # the store refuses the first write: nothing was made
            raise UnavailableError("the store is unavailable")
        return await real(self, *args, **kwargs)

    # in place before the worker opens: its delivery may start and end as it opens
    monkeypatch.setattr(TaskStreams, "finish", refused_once)
    async with Otpd(config, role="worker") as worker:
        (record,) = await until_final(worker, [task_id])
        assert record.status is TaskStatus.SENT
        await worker.audit.flush()
        events, _ = await worker.audit.events(user_id="u4", event="message_sent")
    # the record rode the refused write only; the trail wrote it once the status was saved
    assert calls == [True, False]
    assert [e["task_id"] for e in events] == [task_id]


async def test_an_audit_record_is_one_evalsha_into_the_users_stream_with_a_ttl(
    rstore: RedisStore, raw: aioredis.Redis, clock: FakeClock
) -> None:
    trips = await count_round_trips(
        raw,
        lambda: rstore.append_audit({"event": "otp_issued"}, "u42", 3_600_000, clock.time()),
    )
    assert [c.split()[0] for c in trips] == ["EVALSHA"]
    key = rstore.layout.audit_user("u42")
    # the user's hash tag: on a cluster it lives in the slot of the user's codes
    assert key_slot(key.encode()) == key_slot(rstore.layout.otp("u42", "login").encode())
    assert await raw.type(key) == "stream"
    assert 3590 <= await raw.ttl(key) <= 3600
    assert await raw.exists(rstore.layout.audit_global()) == 0
    await rstore.append_audit({"event": "api_unauthorized"}, None, 3_600_000, clock.time())
    assert await raw.xlen(rstore.layout.audit_global()) == 1
    # the capped stream of events without a user keeps only the retention too
    clock.advance(3601)
    await rstore.append_audit({"event": "api_unauthorized"}, None, 3_600_000, clock.time())
    assert await raw.xlen(rstore.layout.audit_global()) == 1


async def test_a_totp_verify_is_one_evalsha_once_the_process_has_read_the_enrolment(
    make_config: Callable[..., Config], raw: aioredis.Redis
) -> None:
    async with Otpd(make_config("redis")) as daemon:
        daemon.dispatcher.queue.hold_retries()
        totp, now = daemon.totp, daemon.clock.time()
        enrolled = await totp.enroll(user_id="t1", account_name="t1@example.com")
        secret = base64.b32decode(enrolled.secret + "=" * (-len(enrolled.secret) % 8))
        step = time_step(now)
        assert (await totp.confirm(user_id="t1", code=hotp(secret, step))).enabled

        async def verify(code: str) -> None:
            await totp.verify(user_id="t1", code=code)
            await daemon.audit.flush()  # its record goes out after the answer: not counted

        first = await count_round_trips(raw, lambda: verify(hotp(secret, step + 1)))
        # a new process reads the enrolment first, then checks and advances in one script
        fresh = type(totp)(totp.config, totp.deps, issuer=totp.issuer)
        second = await count_round_trips(
            raw, lambda: fresh.verify(user_id="t1", code=hotp(secret, step - 1))
        )
    verbs = [c.split()[0] for c in first if "audit:" not in c]
    assert verbs == ["EVALSHA"], first
    assert [c.split()[0] for c in second if "audit:" not in c] == ["HMGET", "EVALSHA"], second


async def test_more_concurrent_operations_than_connections_wait_for_a_turn(
    redis_url: str, key_prefix: str, clock: FakeClock
) -> None:
    """redis-py's plain pool refuses past its size; the store waits for a connection
    instead, up to store.pool_timeout_seconds."""
    config = load_config(
        data={
            "store": {
                "backend": "redis",
                "redis_url": redis_url,
                "key_prefix": key_prefix,
                "max_connections": 4,
            }
        },
        env={},
    )
    now = clock.time()
    async with RedisStore(config.store) as store:
        results = await asyncio.gather(
            *(store.issue_otp(f"p{i}", otp_record(now), [], now) for i in range(100))
        )
    assert results == [None] * 100


def _queued(task_id: str, now: float, max_backlog: int) -> QueuedTask:
    record = TaskRecord(
        task_id=task_id,
        channel=Channel.EMAIL,
        status=TaskStatus.QUEUED,
        tag="otp_code",
        created_at=now,
        updated_at=now,
        otp_id="otp_q",
    )
    return QueuedTask(
        record, {"body": "k1.sealed", "recipient": "a***@example.com"}, 600, max_backlog
    )


def _code(now: float) -> OtpRecord:
    return OtpRecord("otp_q", "h" * 64, "email", "login", now, now + 600, 3)


async def test_an_issue_records_and_queues_its_tasks_in_the_same_script(
    rstore: RedisStore, clock: FakeClock
) -> None:
    now = clock.time()
    lim = Limit("user_hour", Bucket.user("u1", "otp"), 5, 3600)
    tasks = [_queued("tsk_a", now, 10), _queued("tsk_b", now, 10)]
    assert await rstore.issue_otp("u1", _code(now), [lim], now, enqueue=tasks) is None
    for task_id in ("tsk_a", "tsk_b"):
        record = await rstore.get_task(task_id)
        assert record is not None and record.status is TaskStatus.QUEUED
        assert record.otp_id == "otp_q"
        ready = rstore.layout.ready(rstore.layout.partition(task_id))
        entries = await rstore.redis.xrange(ready) or []
        assert {"t": task_id} in [fields for _, fields in entries]
        assert await rstore.redis.ttl(rstore.layout.task(task_id)) > 0
    assert (await rstore.verify_otp("u1", "login", "h" * 64, now)).result.verified


async def test_a_full_partition_refuses_the_issue_and_writes_nothing(
    rstore: RedisStore, clock: FakeClock
) -> None:
    now = clock.time()
    lim = Limit("user_hour", Bucket.user("u1", "otp"), 1, 3600)
    with pytest.raises(UnavailableError, match="full"):
        await rstore.issue_otp("u1", _code(now), [lim], now, enqueue=[_queued("tsk_c", now, 0)])
    assert await rstore.get_task("tsk_c") is None
    assert (await rstore.verify_otp("u1", "login", "h" * 64, now)).otp_id == ""
    # the limit's one hit is still there to take
    assert await rstore.issue_otp("u1", _code(now), [lim], now) is None


# the scripts' shared prelude, then a call of its equality
_CT_EQUAL = (resources.files("otpd.store.redis") / "lua" / "limits.lua").read_text() + (
    "\nreturn ct_equal(ARGV[1], ARGV[2]) and 1 or 0"
)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=70),
    st.one_of(st.binary(max_size=70), st.integers(0, 69), st.just(None)),
)
def test_the_scripts_constant_time_equality_answers_as_equality_does(
    redis_url: str, a: bytes, other: bytes | int | None
) -> None:
    # None: the same bytes; an int: the same bytes but one, at that position (when inside)
    if other is None:
        b = a
    elif isinstance(other, int):
        b = a[:other] + bytes([a[other] ^ 0x80]) + a[other + 1 :] if other < len(a) else a + b"x"
    else:
        b = other
    with redis.Redis.from_url(redis_url) as client:
        assert client.eval(_CT_EQUAL, 0, a, b) == int(a == b)


@pytest.mark.parametrize("size", [255, 256, 257, 40_000])
def test_the_scripts_constant_time_equality_takes_long_strings_in_chunks(
    redis_url: str, size: int
) -> None:
    a = bytes(range(256)) * (size // 256) + bytes(size % 256)
    with redis.Redis.from_url(redis_url) as client:
        assert client.eval(_CT_EQUAL, 0, a, a) == 1
        for at in (0, size // 2, size - 1):
            b = a[:at] + bytes([a[at] ^ 1]) + a[at + 1 :]
            assert client.eval(_CT_EQUAL, 0, a, b) == 0


async def test_many_hashes_are_read_in_one_evalsha_in_order_with_nothing_for_gone_ones(
    rstore: RedisStore, raw: aioredis.Redis, key_prefix: str
) -> None:
    keys = [f"{key_prefix}h:{i}" for i in range(3)]
    await raw.hset(keys[0], mapping={"a": "1", "b": "two"})
    await raw.hset(keys[2], mapping={"c": "3"})
    got: list[dict[str, str]] = []

    async def read() -> None:
        got.extend(await rstore.hashes("read_tasks", keys))

    sent = await count_round_trips(raw, read)
    assert [c.split()[0] for c in sent] == ["EVALSHA"]
    assert got == [{"a": "1", "b": "two"}, {}, {"c": "3"}]
    assert await rstore.hashes("read_tasks", []) == []


async def test_hashes_are_read_while_redis_is_out_of_memory(
    tmp_path: Path, key_prefix: str
) -> None:
    with redis_server(tmp_path) as url:
        cfg = load_config(
            data={"store": {"backend": "redis", "redis_url": url, "key_prefix": key_prefix}},
            env={},
        )
        async with RedisStore(cfg.store) as store:
            raw = aioredis.Redis.from_url(url, decode_responses=True)
            try:
                await raw.hset(f"{key_prefix}h:task", mapping={"status": "queued"})
                await raw.config_set("maxmemory", 1)  # every write refused from here on
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    await raw.hset(f"{key_prefix}h:other", "f", "v")
                assert await store.hashes("read_tasks", [f"{key_prefix}h:task"]) == [
                    {"status": "queued"}
                ]
            finally:
                await raw.config_set("maxmemory", 0)
                await raw.aclose()


_FIELD_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)  # no lone surrogates


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # each example writes to a user of its own: the store needs no reset between them
@given(
    st.lists(
        st.dictionaries(
            st.text("abcdefgh_", min_size=1, max_size=8).filter(lambda k: k not in ("id", "at")),
            _FIELD_TEXT,
            max_size=6,
        ),
        min_size=1,
        max_size=3,
    )
)
async def test_audit_records_of_one_call_keep_every_field_whatever_it_holds(
    rstore: RedisStore, records: list[dict[str, str]]
) -> None:
    user = f"audit-{uuid.uuid4().hex}"
    now = 1_700_000_000.0
    entries = [({"event": "e", **r}, user, now + i) for i, r in enumerate(records)]
    await rstore.append_audits(entries, 86_400_000)
    events, _ = await rstore.audit_events(user, None, None, None, 10, None)
    kept = [{k: v for k, v in e.items() if k != "id"} for e in reversed(events)]
    assert kept == [{"event": "e", **r} for r in records]
