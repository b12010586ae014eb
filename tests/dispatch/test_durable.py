"""The durable queue on Redis Streams: nothing accepted is lost, nothing is sent twice
without a crash, and any daemon finishes another's work."""

from __future__ import annotations

import asyncio
import base64
import collections
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest

from otpd.clock import FakeClock, SystemClock
from otpd.config import BreakerConfig, DispatchConfig, load_config
from otpd.dispatch import Dispatcher
from otpd.dispatch.durable import DurableQueue
from otpd.metrics import Metrics
from otpd.models import Channel, Message, SendResult, TaskStatus
from otpd.providers.chain import ProviderChain
from otpd.sealing import Keyring
from otpd.store.redis import RedisStore
from otpd.store.redis.streams import GROUP, TaskStreams
from tests.fakes import ScriptedProvider, permanent, transient

MSG = Message(Channel.EMAIL, "jane.doe@example.com", "your code is 493817", "Code", tag="otp_code")
KEYRING = Keyring([("k1", secrets.token_bytes(32))])


def fast(**overrides: Any) -> DispatchConfig:
    values: dict[str, Any] = {
        "workers": 2,
        "max_attempts": 3,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.03,
        "drain_timeout_seconds": 2.0,
        "claim_idle_seconds": 0.5,
        "partitions": 4,
    }
    values.update(overrides)
    return DispatchConfig(**values)


@pytest.fixture
async def redis(redis_url: str, key_prefix: str) -> AsyncIterator[RedisStore]:
    config = load_config(
        data={"store": {"backend": "redis", "redis_url": redis_url, "key_prefix": key_prefix}},
        env={},
    )
    async with RedisStore(config.store, partitions=4) as store:
        yield store


@asynccontextmanager
async def daemon(
    store: RedisStore,
    provider: ScriptedProvider,
    config: DispatchConfig,
    *,
    consumer: str = "d1",
    clock: FakeClock | SystemClock | None = None,
) -> AsyncIterator[Dispatcher]:
    clock = clock or SystemClock()
    metrics = Metrics()
    chain = ProviderChain(
        Channel.EMAIL,
        [provider],
        breaker=BreakerConfig(failure_threshold=1000),
        clock=clock,
        metrics=metrics,
    )
    queue = DurableQueue(
        TaskStreams(store), config, keyring=KEYRING, consumer=consumer, clock=clock
    )
    async with (
        chain,
        Dispatcher(
            store, {Channel.EMAIL: chain}, config, clock=clock, metrics=metrics, queue=queue
        ) as dispatcher,
    ):
        yield dispatcher


async def idle(dispatcher: Dispatcher, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        await dispatcher.wait_idle()


async def test_a_delivered_task_is_sent_acknowledged_and_its_body_dropped(
    redis: RedisStore,
) -> None:
    provider = ScriptedProvider("outbox")
    async with daemon(redis, provider, fast()) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        await idle(dispatcher)
    record = await redis.get_task(queued.task_id)
    assert record is not None
    assert (record.status, record.attempts, record.provider_message_id) == (
        TaskStatus.SENT,
        1,
        "outbox-1",
    )
    assert provider.sent == [MSG]
    raw = await redis.redis.hgetall(redis.layout.task(queued.task_id))
    assert "body" not in raw
    assert await TaskStreams(redis).backlog() == 0


async def test_the_stored_message_is_sealed_to_its_task(redis: RedisStore) -> None:
    provider = ScriptedProvider("outbox")
    provider.gate = asyncio.Event()  # holds the send: the record keeps its body meanwhile
    async with daemon(redis, provider, fast()) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        raw = cast(dict[str, str], await redis.redis.hgetall(redis.layout.task(queued.task_id)))
        assert raw["body"].startswith("k1.")
        assert "493817" not in str(raw) and "jane" not in str(raw)
        assert KEYRING.open(raw["body"], queued.task_id) == MSG.to_json()
        provider.gate.set()
        await idle(dispatcher)


async def test_a_transient_failure_waits_in_the_delayed_set_then_is_delivered(
    redis: RedisStore,
) -> None:
    provider = ScriptedProvider("outbox", [transient(), transient()])
    async with daemon(redis, provider, fast()) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        await idle(dispatcher)
    record = await redis.get_task(queued.task_id)
    assert record is not None
    assert (record.status, record.attempts) == (TaskStatus.SENT, 3)


async def test_a_poison_message_goes_to_dead_letters_at_once_and_replays(
    redis: RedisStore,
) -> None:
    provider = ScriptedProvider("outbox", [permanent("invalid_recipient")])
    async with daemon(redis, provider, fast()) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        await idle(dispatcher)
        letters = await dispatcher.dead_letters(10)
        assert [(d.task_id, d.attempts, d.recipient) for d in letters] == [
            (queued.task_id, 1, "j***@example.com")
        ]
        assert letters[0].last_error.startswith("invalid_recipient")
        assert await dispatcher.dead_letters(10, Channel.SMS) == []
        replayed = await dispatcher.replay(queued.task_id)
        assert replayed is not None
        assert (replayed.task_id, replayed.status, replayed.attempts) == (
            queued.task_id,
            TaskStatus.QUEUED,
            0,
        )
        await idle(dispatcher)
        assert await dispatcher.dead_letters(10) == []
        assert await dispatcher.replay(queued.task_id) is None
    record = await redis.get_task(queued.task_id)
    assert record is not None and record.status is TaskStatus.SENT
    assert provider.sent == [MSG]


async def test_a_transient_failure_is_a_dead_letter_after_max_attempts(
    redis: RedisStore,
) -> None:
    provider = ScriptedProvider("outbox", default=transient())
    async with daemon(redis, provider, fast(max_attempts=3)) as dispatcher:
        queued = await dispatcher.enqueue(MSG)
        await idle(dispatcher)
        letters = await dispatcher.dead_letters(10)
    assert [(d.task_id, d.attempts) for d in letters] == [(queued.task_id, 3)]
    assert provider.calls == 3


async def test_an_expired_message_is_not_sent_late(redis: RedisStore) -> None:
    provider = ScriptedProvider("outbox")
    stale = Message(Channel.EMAIL, "a@example.com", "code 1", "s", expires_at=1.0)
    async with daemon(redis, provider, fast()) as dispatcher:
        queued = await dispatcher.enqueue(stale)
        await idle(dispatcher)
    record = await redis.get_task(queued.task_id)
    assert record is not None
    assert record.status is TaskStatus.FAILED and record.last_error.startswith("expired")
    assert provider.sent == []


async def test_two_daemons_deliver_each_task_exactly_once_and_share_the_work(
    redis: RedisStore,
) -> None:
    one, two = ScriptedProvider("outbox"), ScriptedProvider("outbox")
    config = fast(workers=4)
    async with (
        daemon(redis, one, config, consumer="d1") as d1,
        daemon(redis, two, config, consumer="d2") as d2,
    ):
        ids = [(await (d1 if i % 2 else d2).enqueue(MSG)).task_id for i in range(400)]
        await idle(d1)
        await idle(d2)
    assert len(one.sent) + len(two.sent) == 400
    assert one.sent and two.sent
    statuses = {(await redis.get_task(i)).status for i in ids}  # type: ignore[union-attr]
    assert statuses == {TaskStatus.SENT}


async def test_entries_a_crashed_daemon_held_are_claimed_and_delivered(
    redis: RedisStore,
) -> None:
    streams = TaskStreams(redis)
    provider = ScriptedProvider("outbox")
    config = fast()
    async with daemon(redis, ScriptedProvider("outbox"), config, consumer="d1") as d1:
        d1.queue.hold_retries()  # d1 reads nothing: the entries wait for the "crashed" one
        ids = [(await d1.enqueue(MSG)).task_id for _ in range(10)]
    # a consumer that reads the entries and dies before acknowledging any
    taken = await streams.read("crashed", streams.partitions, 100, 10)
    assert {e.task_id for e in taken} == set(ids)
    async with daemon(redis, provider, config, consumer="d2") as d2:
        await idle(d2)
    assert len(provider.sent) == 10
    for task_id in ids:
        record = await redis.get_task(task_id)
        assert record is not None and record.status is TaskStatus.SENT
    pending = await redis.redis.xpending(redis.layout.ready(0), GROUP)
    assert pending["pending"] == 0


async def test_a_reclaimed_entry_whose_record_says_sent_is_only_acknowledged(
    redis: RedisStore,
) -> None:
    streams = TaskStreams(redis)
    provider = ScriptedProvider("outbox")
    config = fast()
    async with daemon(redis, ScriptedProvider("outbox"), config, consumer="d1") as d1:
        d1.queue.hold_retries()
        queued = await d1.enqueue(MSG)
    [entry] = await streams.read("crashed", streams.partitions, 10, 10)
    # the crashed daemon had sent it and written "sent", but died before the ack
    assert await streams.update(queued.task_id, {"status": "sent"})
    async with daemon(redis, provider, config, consumer="d2") as d2:
        await idle(d2)
    assert provider.sent == []
    assert await streams.backlog() == 0
    assert entry.task_id == queued.task_id


async def test_a_store_outage_during_delivery_is_never_terminal(tmp_path: Any) -> None:
    """Redis stalls mid-run: tasks wait (pending or deferred), and after it answers every
    accepted task ends sent; none ends 'internal error'."""
    from tests.conftest import redis_server

    with redis_server(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as url:
        port = url.rsplit(":", 1)[1].split("/")[0]
        config = load_config(
            data={"store": {"backend": "redis", "redis_url": url, "socket_timeout_seconds": 0.5}},
            env={},
        )
        async with RedisStore(config.store, partitions=4) as store:
            provider = ScriptedProvider("outbox")
            provider.gate = asyncio.Event()
            async with daemon(store, provider, fast(workers=4)) as dispatcher:
                ids = [(await dispatcher.enqueue(MSG)).task_id for _ in range(20)]
                await asyncio.sleep(0.2)  # workers hold jobs at the gate
                # a stall: every command times out for 1.5 s
                await store.redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # type: ignore[no-untyped-call]
                provider.gate.set()
                await asyncio.sleep(2.0)
                await idle(dispatcher, timeout=30)
            for task_id in ids:
                record = await store.get_task(task_id)
                assert record is not None
                assert record.status is TaskStatus.SENT, record
    assert port


def test_keys_come_from_the_config_and_a_key_from_elsewhere_does_not_open() -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    ring = Keyring([("new", base64.b64decode(key)), ("old", secrets.token_bytes(32))])
    sealed = ring.seal(b"secret", "tsk_1")
    assert sealed.startswith("new.")
    assert ring.open(sealed, "tsk_1") == b"secret"
    from otpd.sealing import SealError

    with pytest.raises(SealError):
        ring.open(sealed, "tsk_2")  # bound to another task
    with pytest.raises(SealError):
        KEYRING.open(sealed, "tsk_1")  # a ring without that key


async def test_entries_waiting_in_a_live_daemons_buffer_are_never_sent_twice(
    redis: RedisStore,
) -> None:
    """A slow provider lets buffered entries age past claim_idle_seconds; another daemon
    claims them, and only the daemon holding an entry when a worker starts sends it."""
    config = fast(workers=1, claim_idle_seconds=0.5, provider_timeout_seconds=0.4)
    sends: collections.Counter[str] = collections.Counter()

    class Slow(ScriptedProvider):
        async def _send(self, message: Message) -> SendResult:
            await asyncio.sleep(0.3)  # under the provider timeout, over half the claim time
            sends[message.text] += 1
            return SendResult(self.name, message.text)

    async with (
        daemon(redis, Slow("slow"), config, consumer="d1") as d1,
        daemon(redis, Slow("slow"), config, consumer="d2") as d2,
    ):
        for i in range(20):
            await d1.enqueue(Message(Channel.EMAIL, f"u{i}@example.com", f"m{i}", "s"))
        await idle(d1, timeout=30)
        await idle(d2, timeout=30)
    assert sorted(sends) == sorted(f"m{i}" for i in range(20))
    assert set(sends.values()) == {1}, sends


async def test_the_durable_queue_delivers_on_a_redis_cluster(
    redis_cluster_env: Any, key_prefix: str
) -> None:
    """Every partition is read on its own there, and each script touches one slot."""
    config = load_config(
        data={
            "store": {
                "backend": "redis",
                "mode": "cluster",
                "redis_url": redis_cluster_env.seed_url,
                "key_prefix": key_prefix,
            }
        },
        env={},
    )
    async with RedisStore(config.store, partitions=4) as store:
        one, two = ScriptedProvider("outbox"), ScriptedProvider("outbox", [permanent()])
        async with (
            daemon(store, one, fast(), consumer="c1") as d1,
            daemon(store, two, fast(), consumer="c2") as d2,
        ):
            ids = [(await d1.enqueue(MSG)).task_id for _ in range(60)]
            await idle(d1)
            await idle(d2)
            letters = await d1.dead_letters(10)
            assert len(letters) == 1
            assert await d1.replay(letters[0].task_id) is not None
            await idle(d1)
            await idle(d2)
        assert len(one.sent) + len(two.sent) == 60
        for task_id in ids:
            record = await store.get_task(task_id)
            assert record is not None and record.status is TaskStatus.SENT
        assert await TaskStreams(store).backlog() == 0


async def test_retry_timers_are_let_go_once_they_fire(redis: RedisStore) -> None:
    """A long-running daemon must not keep one timer handle per retry it ever made."""
    provider = ScriptedProvider("outbox", [transient()] * 20)
    async with daemon(redis, provider, fast(max_attempts=5)) as dispatcher:
        for _ in range(5):
            await dispatcher.enqueue(MSG)
        await idle(dispatcher)
        assert isinstance(dispatcher.queue, DurableQueue)
        await asyncio.sleep(0.05)
        assert not dispatcher.queue._timers
