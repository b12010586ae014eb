"""The background dispatcher: status records, retries, limits and a drain that loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from otpd.clock import FakeClock
from otpd.config import BreakerConfig, Config, DispatchConfig, EmailConfig
from otpd.crypto import Hasher
from otpd.dispatch import Admission, Dispatcher, RetryPolicy
from otpd.dispatch.dispatcher import ReportLink
from otpd.errors import UnavailableError
from otpd.metrics import Metrics
from otpd.models import Channel, Message, SendResult, TaskRecord, TaskStatus
from otpd.providers.chain import ProviderChain
from otpd.services.limits import LimitPolicy, SendingLimits
from otpd.store.base import Store
from tests.fakes import ScriptedProvider, permanent, transient

MSG = Message(Channel.EMAIL, "a@example.com", "hello", "subject", tag="test")


def fast(**overrides: float) -> DispatchConfig:
    values: dict[str, float] = {
        "workers": 2,
        "max_attempts": 3,
        "backoff_base_seconds": 0.005,
        "backoff_max_seconds": 0.02,
        "drain_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return DispatchConfig(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    store: Store,
    provider: ScriptedProvider,
    config: DispatchConfig,
    clock: FakeClock,
    admission: Admission | None = None,
    reports: ReportLink | None = None,
) -> AsyncIterator[Dispatcher]:
    metrics = Metrics()
    chain = ProviderChain(
        Channel.EMAIL,
        [provider],
        breaker=BreakerConfig(failure_threshold=100),
        clock=clock,
        metrics=metrics,
    )
    async with (
        chain,
        Dispatcher(
            store,
            {Channel.EMAIL: chain},
            config,
            clock=clock,
            metrics=metrics,
            admission=admission,
            reports=reports,
        ) as dispatcher,
    ):
        yield dispatcher


async def settled(dispatcher: Dispatcher, task_id: str) -> TaskRecord:
    """The task's record once every accepted task is final (the dispatcher went idle)."""
    async with asyncio.timeout(5):
        await dispatcher.wait_idle()
    record = await dispatcher.store.get_task(task_id)
    assert record is not None and record.status.final, record
    return record


async def between_attempts(dispatcher: Dispatcher, task_id: str) -> TaskRecord:
    """The task's record once nothing is queued or in flight, only retries waiting."""
    async with asyncio.timeout(5):
        await dispatcher.queue.join()
    record = await dispatcher.store.get_task(task_id)
    assert record is not None
    return record


async def test_delivered_task_is_recorded_as_sent(store: Store, clock: FakeClock) -> None:
    provider = ScriptedProvider("outbox")
    async with running(store, provider, fast(), clock) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        assert (await store.get_task(queued.task_id)) is not None
        record = await settled(dispatcher, queued.task_id)
    assert (record.status, record.attempts, record.provider) == (TaskStatus.SENT, 1, "outbox")
    assert provider.sent == [MSG]


class RecordingLink:
    """Records each task the dispatcher links, with its stored status at that moment;
    a link takes a while, as a store round trip does (the drain must wait for it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[tuple[str, str, TaskStatus | None]] = []

    async def linked(self, record: TaskRecord) -> None:
        await asyncio.sleep(0.05)
        stored = await self.store.get_task(record.task_id)
        self.seen.append(
            (record.provider, record.provider_message_id, stored.status if stored else None)
        )


async def test_a_sent_task_is_linked_to_the_provider_message_after_it_is_recorded_sent(
    store: Store, clock: FakeClock
) -> None:
    link = RecordingLink(store)
    provider = ScriptedProvider("sendgrid", [transient()])
    async with running(store, provider, fast(), clock, reports=link) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        await settled(dispatcher, queued.task_id)
    # once, after the retry succeeded, with the id the provider returned, and not cut off
    # by the drain that ended the block right after the task was recorded sent
    assert link.seen == [("sendgrid", "sendgrid-1", TaskStatus.SENT)]


async def test_a_failed_task_is_never_linked(store: Store, clock: FakeClock) -> None:
    link = RecordingLink(store)
    provider = ScriptedProvider("sendgrid", [permanent()])
    async with running(store, provider, fast(), clock, reports=link) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        await settled(dispatcher, queued.task_id)
    assert link.seen == []


async def test_transient_failure_is_retried_then_delivered(store: Store, clock: FakeClock) -> None:
    provider = ScriptedProvider("outbox", [transient(), transient()])
    async with running(store, provider, fast(), clock) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        record = await settled(dispatcher, queued.task_id)
    assert (record.status, record.attempts, record.last_error) == (TaskStatus.SENT, 3, "")


async def test_retrying_status_is_visible_between_attempts(store: Store, clock: FakeClock) -> None:
    provider = ScriptedProvider("outbox", [transient("throttled")])
    config = fast(backoff_base_seconds=0.3, backoff_max_seconds=0.3)
    async with running(store, provider, config, clock) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        waiting = await between_attempts(dispatcher, queued.task_id)
        assert waiting.attempts == 1
        assert waiting.last_error.startswith("all_providers_failed")
        assert (await settled(dispatcher, queued.task_id)).status is TaskStatus.SENT


async def test_task_fails_after_max_attempts(store: Store, clock: FakeClock) -> None:
    provider = ScriptedProvider("outbox", default=transient())
    async with running(store, provider, fast(max_attempts=3), clock) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        record = await settled(dispatcher, queued.task_id)
    assert (record.status, record.attempts) == (TaskStatus.FAILED, 3)
    assert provider.calls == 3


async def test_permanent_failure_is_not_retried(store: Store, clock: FakeClock) -> None:
    provider = ScriptedProvider("outbox", default=permanent("smtp_550"))
    async with running(store, provider, fast(), clock) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        record = await settled(dispatcher, queued.task_id)
    assert (record.status, record.attempts, record.provider) == (TaskStatus.FAILED, 1, "outbox")
    assert record.last_error.startswith("smtp_550")


async def test_shutdown_drains_queued_work_within_the_deadline(
    store: Store, clock: FakeClock
) -> None:
    provider = ScriptedProvider("outbox")
    async with running(store, provider, fast(workers=1), clock) as dispatcher:
        ids = [(await dispatcher.enqueue(MSG)).task_id for _ in range(20)]
    assert dispatcher.last_report is not None
    assert dispatcher.last_report.unfinished == ()
    assert len(provider.sent) == 20
    assert {(await store.get_task(i)).status for i in ids} == {TaskStatus.SENT}  # type: ignore[union-attr]


async def test_work_left_at_the_drain_deadline_ends_failed_not_lost(
    store: Store, clock: FakeClock
) -> None:
    provider = ScriptedProvider("outbox")
    provider.gate = asyncio.Event()  # sends hang until the drain gives up
    async with running(store, provider, fast(workers=1, drain_timeout_seconds=0.05), clock) as d:
        ids = [(await d.enqueue(MSG)).task_id for _ in range(3)]
        await asyncio.sleep(0.01)
    assert d.last_report is not None
    assert not d.last_report.drained_in_time
    assert sorted(d.last_report.unfinished) == sorted(ids)
    for task_id in ids:
        record = await store.get_task(task_id)
        assert record is not None
        assert record.status is TaskStatus.FAILED
        assert record.last_error.startswith("shutdown")


async def test_pending_retry_at_shutdown_ends_failed(store: Store, clock: FakeClock) -> None:
    provider = ScriptedProvider("outbox", [transient()])
    config = fast(backoff_base_seconds=30, backoff_max_seconds=30)
    async with running(store, provider, config, clock) as d:
        queued = await d.enqueue(MSG)
        await between_attempts(d, queued.task_id)
    record = await store.get_task(queued.task_id)
    assert record is not None and record.status is TaskStatus.FAILED
    assert d.last_report is not None and d.last_report.unfinished == (queued.task_id,)


async def test_enqueue_after_shutdown_is_refused(store: Store, clock: FakeClock) -> None:
    async with running(store, ScriptedProvider("outbox"), fast(), clock) as d:
        await d.shutdown()
        assert not d.running
        with pytest.raises(UnavailableError):
            await d.enqueue(MSG)


async def test_full_queue_refuses_new_work(store: Store, clock: FakeClock) -> None:
    provider = ScriptedProvider("outbox")
    provider.gate = asyncio.Event()
    async with running(
        store, provider, fast(workers=1, queue_size=2, drain_timeout_seconds=0.01), clock
    ) as d:
        await d.enqueue(MSG)
        await asyncio.sleep(0.01)  # the worker holds the first one
        await d.enqueue(MSG)
        await d.enqueue(MSG)
        with pytest.raises(UnavailableError, match="full"):
            await d.enqueue(MSG)


async def test_message_over_the_recipient_limit_ends_failed_rate_limited(
    store: Store, clock: FakeClock
) -> None:
    config = Config(email=EmailConfig(per_recipient_hour=2))
    limiter = SendingLimits(LimitPolicy(config, Hasher(b"k" * 32), Metrics()), store)
    provider = ScriptedProvider("outbox")
    async with running(store, provider, fast(), clock, limiter) as d:
        ids = [(await d.enqueue(MSG)).task_id for _ in range(3)]
        other = await d.enqueue(Message(Channel.EMAIL, "b@example.com", "t", "s"))
        records = [await settled(d, i) for i in [*ids, other.task_id]]
    statuses = [r.status for r in records]
    assert statuses.count(TaskStatus.SENT) == 3
    [refused] = [r for r in records if r.status is TaskStatus.FAILED]
    assert refused.last_error == "rate_limited: email_recipient_hour"
    assert refused.attempts == 0
    assert len(provider.sent) == 3


async def test_worker_survives_an_internal_error(store: Store, clock: FakeClock) -> None:
    class BrokenOnce:
        calls = 0

        async def admit(self, message: Message, member: str, now: float) -> None:
            BrokenOnce.calls += 1
            if BrokenOnce.calls == 1:
                raise RuntimeError("store exploded")

    provider = ScriptedProvider("outbox")
    async with running(store, provider, fast(workers=1), clock, BrokenOnce()) as d:
        first = await d.enqueue(MSG)
        second = await d.enqueue(MSG)
        broken = await settled(d, first.task_id)
        fine = await settled(d, second.task_id)
    assert broken.status is TaskStatus.FAILED
    assert broken.last_error == "internal error during delivery"
    assert fine.status is TaskStatus.SENT


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base=2.0, cap=60.0, rng=random.Random(7))
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (6, 60.0), (9, 60.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant
    assert policy.should_retry(9) and not policy.should_retry(10)


async def test_dispatcher_cannot_be_started_twice(store: Store, clock: FakeClock) -> None:
    async with running(store, ScriptedProvider("outbox"), fast(), clock) as d:
        with pytest.raises(RuntimeError, match="already running"):
            await d.__aenter__()


async def test_shutdown_completes_when_a_library_swallows_the_cancellation(
    store: Store, clock: FakeClock
) -> None:
    class Swallowing(ScriptedProvider):
        async def _send(self, message: Message) -> SendResult:
            with contextlib.suppress(asyncio.CancelledError):  # as redis-py can, mid-command
                await asyncio.sleep(3600)
            return await super()._send(message)

    provider = Swallowing("outbox")
    async with running(store, provider, fast(workers=2, drain_timeout_seconds=0.05), clock) as d:
        ids = [(await d.enqueue(MSG)).task_id for _ in range(4)]
        await asyncio.sleep(0.01)
    assert d.last_report is not None and not d.last_report.drained_in_time
    for task_id in ids:
        record = await store.get_task(task_id)
        assert record is not None and record.status.final


async def test_a_store_down_before_sending_defers_the_task_until_it_answers(
    clock: FakeClock,
) -> None:
    """Nothing is sent while the attempt cannot be recorded; once the store answers, the
    task is sent once and ends sent (never "internal error")."""
    from structlog.testing import capture_logs

    from otpd.store.memory import MemoryStore

    class StatusWritesFail(MemoryStore):
        down = True

        async def update_task(self, record: TaskRecord) -> None:
            if self.down:
                raise UnavailableError("the store is unavailable")
            await super().update_task(record)

    store = StatusWritesFail(clock=clock)
    provider = ScriptedProvider("outbox")
    with capture_logs() as logs:
        async with store, running(store, provider, fast(), clock) as d:
            queued = await d.enqueue(MSG)
            await asyncio.sleep(0.3)
            assert provider.sent == []
            store.down = False
            async with asyncio.timeout(5):
                await d.wait_idle()
            record = await store.get_task(queued.task_id)
    assert provider.sent == [MSG]
    assert record is not None and (record.status, record.attempts) == (TaskStatus.SENT, 1)
    assert any(e["event"] == "task.deferred" for e in logs)
    assert not any(e["log_level"] == "error" for e in logs), logs


async def test_a_final_status_the_store_refuses_is_written_again_until_it_lands(
    clock: FakeClock,
) -> None:
    from structlog.testing import capture_logs

    from otpd.store.memory import MemoryStore

    class FinalWritesFail(MemoryStore):
        refusals = 5

        async def update_task(self, record: TaskRecord) -> None:
            if record.status.final and self.refusals:
                self.refusals -= 1
                raise UnavailableError("the store is unavailable")
            await super().update_task(record)

    store = FinalWritesFail(clock=clock)
    provider = ScriptedProvider("outbox")
    with capture_logs() as logs:
        async with store, running(store, provider, fast(), clock) as d:
            queued = await d.enqueue(MSG)
            async with asyncio.timeout(10):
                await d.wait_idle()
            record = await store.get_task(queued.task_id)
    assert provider.sent == [MSG]
    assert record is not None and record.status is TaskStatus.SENT
    not_saved = [e for e in logs if e["event"] == "task.status_not_saved"]
    assert len(not_saved) == 1 and not_saved[0]["log_level"] == "warning"
    assert not any("exc_info" in e for e in not_saved)
