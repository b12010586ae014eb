"""The durable queue with ``store.fallback = "memory"``: while Redis is down jobs are
accepted and delivered in this process, workers never wait for Redis, and once it answers
the jobs not yet sent move into the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from otpd.clock import SystemClock
from otpd.config import BreakerConfig, DispatchConfig, load_config
from otpd.dispatch import Dispatcher
from otpd.dispatch.durable import DurableQueue
from otpd.errors import UnavailableError
from otpd.metrics import Metrics
from otpd.models import Channel, TaskStatus
from otpd.providers.chain import ProviderChain
from otpd.store.fallback import FallbackStore
from otpd.store.memory import MemoryStore
from otpd.store.redis import RedisStore
from otpd.store.redis.streams import TaskStreams
from tests.conftest import RestartableRedis
from tests.dispatch.test_durable import KEYRING, MSG, fast, idle
from tests.fakes import ScriptedProvider, permanent, transient


@dataclass
class Daemon:
    dispatcher: Dispatcher
    store: FallbackStore
    redis: RedisStore


@asynccontextmanager
async def daemon(
    url: str, key_prefix: str, provider: ScriptedProvider, config: DispatchConfig
) -> AsyncIterator[Daemon]:
    clock = SystemClock()
    metrics = Metrics()
    store_config = load_config(
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
    redis = RedisStore(store_config, metrics=metrics, partitions=config.partitions)
    local = MemoryStore(key_prefix=key_prefix, clock=clock)
    store = FallbackStore(redis, local, clock=clock, metrics=metrics, probe_seconds=0.05)
    chain = ProviderChain(
        Channel.EMAIL,
        [provider],
        breaker=BreakerConfig(failure_threshold=1000),
        clock=clock,
        metrics=metrics,
    )
    queue = DurableQueue(
        TaskStreams(redis),
        config,
        keyring=KEYRING,
        consumer="d1",
        clock=clock,
        socket_timeout=0.5,
        fallback=store,
    )
    async with (
        store,
        chain,
        Dispatcher(
            store, {Channel.EMAIL: chain}, config, clock=clock, metrics=metrics, queue=queue
        ) as dispatcher,
    ):
        yield Daemon(dispatcher, store, redis)


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_jobs_accepted_during_an_outage_are_sent_and_queued_ones_move_into_the_stream(
    restartable_redis: RestartableRedis, key_prefix: str
) -> None:
    provider = ScriptedProvider("outbox")
    provider.gate = asyncio.Event()  # the one worker holds the first job at the gate
    config = fast(workers=1)
    async with daemon(restartable_redis.url, key_prefix, provider, config) as d:
        restartable_redis.stop()
        ids = [(await d.dispatcher.enqueue(MSG)).task_id for _ in range(3)]
        assert d.store.degraded
        assert all(d.store.local.holds_task(i) for i in ids)
        await until(lambda: provider.calls == 1)
        # Redis comes back empty (no persistence): the consumer groups are gone too
        restartable_redis.start()
        await until(lambda: not d.store.degraded)
        first, *queued = ids
        await until(lambda: not any(d.store.local.holds_task(i) for i in queued))
        for task_id in queued:  # in Redis now, each with its sealed message
            record = await d.redis.get_task(task_id)
            assert record is not None and record.status is TaskStatus.QUEUED
        provider.gate.set()
        await idle(d.dispatcher)
        assert len(provider.sent) == 3  # each once
        assert d.store.local.holds_task(first)  # it was with a worker here: it stays
        for task_id in ids:
            record = await d.store.get_task(task_id)
            assert record is not None and record.status is TaskStatus.SENT, record
        for task_id in queued:
            assert (await d.redis.get_task(task_id)).status is TaskStatus.SENT  # type: ignore[union-attr]


async def test_a_local_retry_that_comes_due_after_the_outage_goes_through_the_stream(
    restartable_redis: RestartableRedis, key_prefix: str
) -> None:
    provider = ScriptedProvider("outbox", [transient()])
    config = fast(backoff_base_seconds=2.0, backoff_max_seconds=2.0)  # due in 1 to 2 s
    async with daemon(restartable_redis.url, key_prefix, provider, config) as d:
        restartable_redis.stop()
        queued = await d.dispatcher.enqueue(MSG)
        await until(lambda: provider.calls == 1)
        local = await d.store.get_task(queued.task_id)
        assert local is not None and local.status is TaskStatus.RETRYING
        restartable_redis.start()
        await until(lambda: not d.store.degraded)
        await idle(d.dispatcher)
        assert not d.store.local.holds_task(queued.task_id)
        record = await d.redis.get_task(queued.task_id)
        assert record is not None
        assert (record.status, record.attempts) == (TaskStatus.SENT, 2)
        assert len(provider.sent) == 1


async def test_a_status_redis_cannot_take_is_written_later_and_the_worker_goes_on(
    tmp_path: Any, key_prefix: str
) -> None:
    server = RestartableRedis(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        provider = ScriptedProvider("outbox")
        provider.gate = asyncio.Event()
        async with daemon(server.url, key_prefix, provider, fast(workers=1)) as d:
            held = await d.dispatcher.enqueue(MSG)  # a stream job, at the gate
            await until(lambda: provider.calls == 1)
            server.stop()
            provider.gate.set()  # sent; its "sent" cannot be written now
            await until(lambda: len(provider.sent) == 1)
            # the one worker is free: a job accepted now is sent during the outage
            during = await d.dispatcher.enqueue(MSG)
            await until(lambda: len(provider.sent) == 2)
            record = await d.store.get_task(during.task_id)
            assert record is not None and record.status is TaskStatus.SENT
            server.start()  # with its data: the held job's record and entry
            await idle(d.dispatcher)
            record = await d.redis.get_task(held.task_id)
            assert record is not None and record.status is TaskStatus.SENT
            assert await TaskStreams(d.redis).backlog() == 0
        assert len(provider.sent) == 2  # the held job was not sent again
    finally:
        server.stop()


async def test_the_queue_opens_with_redis_down_and_reads_once_it_answers(
    tmp_path: Any, key_prefix: str
) -> None:
    server = RestartableRedis(tmp_path)  # nothing listens yet
    provider = ScriptedProvider("outbox")
    try:
        async with daemon(server.url, key_prefix, provider, fast()) as d:
            early = await d.dispatcher.enqueue(MSG)
            await until(lambda: len(provider.sent) == 1)
            server.start()
            await until(lambda: not d.store.degraded)
            late = await d.dispatcher.enqueue(MSG)  # through the stream: groups exist now
            await idle(d.dispatcher)
            assert len(provider.sent) == 2
            assert (await d.store.get_task(early.task_id)).status is TaskStatus.SENT  # type: ignore[union-attr]
            assert (await d.redis.get_task(late.task_id)).status is TaskStatus.SENT  # type: ignore[union-attr]
    finally:
        server.stop()


async def test_local_jobs_are_bounded_by_the_queue_size(
    restartable_redis: RestartableRedis, key_prefix: str
) -> None:
    provider = ScriptedProvider("outbox")
    provider.gate = asyncio.Event()
    async with daemon(restartable_redis.url, key_prefix, provider, fast(queue_size=3)) as d:
        restartable_redis.stop()
        for _ in range(3):
            await d.dispatcher.enqueue(MSG)
        with pytest.raises(UnavailableError, match="full"):
            await d.dispatcher.enqueue(MSG)
        provider.gate.set()
        # (idle() asks Redis about the stream too; join() is what this process holds)
        await asyncio.wait_for(d.dispatcher.queue.join(), 5)
        await d.dispatcher.enqueue(MSG)  # room again once they were sent
        await asyncio.wait_for(d.dispatcher.queue.join(), 5)
        assert len(provider.sent) == 4


async def test_a_stop_during_the_outage_records_the_local_jobs_left_failed(
    restartable_redis: RestartableRedis, key_prefix: str
) -> None:
    provider = ScriptedProvider("outbox")
    provider.gate = asyncio.Event()
    config = fast(workers=1, drain_timeout_seconds=0.2)
    async with daemon(restartable_redis.url, key_prefix, provider, config) as d:
        restartable_redis.stop()
        ids = [(await d.dispatcher.enqueue(MSG)).task_id for _ in range(3)]
        await until(lambda: provider.calls == 1)
        report = await d.dispatcher.shutdown()
        # nothing can claim them from this process's memory: they end visibly
        assert set(report.unfinished) == set(ids)
        for task_id in ids:
            record = await d.store.local.get_task(task_id)
            assert record is not None and record.status is TaskStatus.FAILED


async def test_entries_of_a_read_whose_reply_was_lost_are_taken_at_once(
    restartable_redis: RestartableRedis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis served a read, then the connection died before the reply arrived: the
    entries are pending under this consumer, which never saw them. They are taken once
    the store answers, not after claim_idle_seconds."""
    provider = ScriptedProvider("outbox")
    config = fast(claim_idle_seconds=60)
    async with daemon(restartable_redis.url, key_prefix, provider, config) as d:
        queue = d.dispatcher.queue
        assert isinstance(queue, DurableQueue)
        real = queue.streams.read
        lost: list[int] = []

        async def read(*args: Any, **kwargs: Any) -> Any:
            entries = await real(*args, **kwargs)
            if entries and not kwargs.get("pending") and not lost:
                lost.append(len(entries))
                raise UnavailableError("the store is unavailable")
            return entries

        monkeypatch.setattr(queue.streams, "read", read)
        queued = await d.dispatcher.enqueue(MSG)
        await idle(d.dispatcher, timeout=5)
        assert lost == [1]
        assert provider.sent == [MSG]
        record = await d.redis.get_task(queued.task_id)
        assert record is not None and record.status is TaskStatus.SENT


async def test_a_dead_letter_of_the_outage_is_listed_and_replays_through_the_stream(
    restartable_redis: RestartableRedis, key_prefix: str
) -> None:
    provider = ScriptedProvider("outbox", [permanent()])
    async with daemon(restartable_redis.url, key_prefix, provider, fast()) as d:
        restartable_redis.stop()
        queued = await d.dispatcher.enqueue(MSG)
        await until(lambda: provider.calls == 1)
        restartable_redis.start()
        await until(lambda: not d.store.degraded)
        letters = await d.dispatcher.dead_letters(10)
        assert [(x.task_id, x.recipient) for x in letters] == [(queued.task_id, "j***@example.com")]
        replayed = await d.dispatcher.replay(queued.task_id)
        assert replayed is not None and replayed.attempts == 0
        await idle(d.dispatcher)
        assert await d.dispatcher.dead_letters(10) == []
        assert not d.store.local.holds_task(queued.task_id)
        record = await d.redis.get_task(queued.task_id)
        assert record is not None and record.status is TaskStatus.SENT
        assert provider.sent == [MSG]
