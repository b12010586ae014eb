"""The durable delivery queue (Redis Streams) against the in-process queue, same run:
enqueue-to-sent throughput, the latency it adds, and Redis commands per task.

    .venv/bin/python bench/dispatch_durable.py [--tasks 5000] [--workers 4] [--concurrency 50]

The provider returns at once, in process, so only the queue and the task records are
measured. The floor is the in-process queue on the same Redis store (what
``dispatch.durable = false`` gives with ``store.backend = "redis"``); the goal is a
durable/in-process throughput ratio of at least 0.5. The in-process queue on the memory
store is shown for reference. Sending limits (one script per task in either mode) are left
out. Commands per task are the ``INFO commandstats`` delta on a private redis-server over
the loaded run, divided by the tasks: commands a Lua script runs inside Redis count too,
and so do the durable queue's background reads, claims and sweeps during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._redis import percentiles, private_redis
from otpd.clock import SystemClock
from otpd.config import BreakerConfig, DispatchConfig, load_config
from otpd.dispatch import DeliveryQueue, Dispatcher
from otpd.dispatch.durable import DurableQueue
from otpd.metrics import Metrics
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import Provider
from otpd.providers.chain import ProviderChain
from otpd.sealing import Keyring
from otpd.store.base import Store
from otpd.store.memory import MemoryStore
from otpd.store.redis import RedisStore
from otpd.store.redis.streams import TaskStreams

GOAL = 0.5  # durable / in-process throughput
KEYRING = Keyring([("bench", secrets.token_bytes(32))])


class NullProvider(Provider):
    """Delivers at once: tells ``on_send`` which message went out."""

    name = "null"
    channel = Channel.EMAIL

    def __init__(self, on_send: Callable[[Message], None]) -> None:
        super().__init__()
        self.on_send = on_send

    async def _send(self, message: Message) -> SendResult:
        self.on_send(message)
        return SendResult(self.name, message.text)


@dataclass
class Run:
    """What one queue did."""

    label: str
    tasks: int = 0
    seconds: float = 0.0
    enqueue: list[float] = field(default_factory=list)  # the enqueue call, loaded
    to_sent: list[float] = field(default_factory=list)  # enqueue to provider, loaded
    unloaded: list[float] = field(default_factory=list)  # enqueue to provider, one at a time
    commands: Counter[str] = field(default_factory=Counter)  # per loaded run
    idle_commands: float = 0.0  # per second with nothing queued

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


class Bench:
    """Times tasks from enqueue to the provider; one per queue under test."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.all_sent: asyncio.Event | None = None
        self.expected = 0

    def on_send(self, message: Message) -> None:
        self.sent[message.text] = time.perf_counter()
        waiter = self.waiting.pop(message.text, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.all_sent is not None and len(self.sent) >= self.expected:
            self.all_sent.set()


def message(serial: str) -> Message:
    return Message(
        Channel.EMAIL,
        f"user{serial}@example.com",
        serial,
        "Your sign-in code",
        f"<p>Your code is <b>{serial}</b></p>",
        tag="otp_code",
    )


@contextlib.asynccontextmanager
async def dispatcher(
    store: Store, config: DispatchConfig, bench: Bench, *, durable: bool
) -> AsyncIterator[Dispatcher]:
    clock, metrics = SystemClock(), Metrics()
    chain = ProviderChain(
        Channel.EMAIL,
        [NullProvider(bench.on_send)],
        breaker=BreakerConfig(),
        clock=clock,
        metrics=metrics,
        attempt_timeout=config.provider_timeout_seconds,
    )
    queue: DeliveryQueue | None = None
    if durable:
        assert isinstance(store, RedisStore)
        queue = DurableQueue(
            TaskStreams(store), config, keyring=KEYRING, consumer="bench", clock=clock
        )
    async with (
        chain,
        Dispatcher(
            store, {Channel.EMAIL: chain}, config, clock=clock, metrics=metrics, queue=queue
        ) as running,
    ):
        yield running


async def commandstats(raw: aioredis.Redis | None) -> Counter[str]:
    if raw is None:
        return Counter()
    info: dict[str, Any] = await raw.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in info.items()
            if name not in ("cmdstat_info",)
        }
    )


async def loaded(
    d: Dispatcher, bench: Bench, prefix: str, tasks: int, concurrency: int, run: Run
) -> None:
    """``tasks`` enqueued from ``concurrency`` callers at once, until every one is sent
    and its final status written."""
    bench.all_sent = asyncio.Event()
    bench.expected = len(bench.sent) + tasks
    serials = iter(range(tasks))

    async def caller() -> None:
        for i in serials:
            serial = f"{prefix}{i}"
            t0 = time.perf_counter()
            bench.started[serial] = t0
            await d.enqueue(message(serial))
            run.enqueue.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(caller())
    await bench.all_sent.wait()
    await d.queue.join()  # the last "sent" records written too
    run.seconds = time.perf_counter() - t0
    run.tasks = tasks
    run.to_sent = [bench.sent[f"{prefix}{i}"] - bench.started[f"{prefix}{i}"] for i in range(tasks)]


async def one_at_a_time(d: Dispatcher, bench: Bench, prefix: str, tasks: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    for i in range(tasks):
        serial = f"{prefix}{i}"
        waiter: asyncio.Future[None] = loop.create_future()
        bench.waiting[serial] = waiter
        t0 = time.perf_counter()
        await d.enqueue(message(serial))
        await waiter
        out.append(bench.sent[serial] - t0)
        await d.queue.join()  # the next one starts with nothing in flight
    return out


async def measure(
    label: str,
    store: Store,
    raw: aioredis.Redis | None,
    config: DispatchConfig,
    args: argparse.Namespace,
    *,
    durable: bool,
) -> Run:
    run = Run(label)
    bench = Bench()
    async with dispatcher(store, config, bench, durable=durable) as d:
        warm = Run(label)
        await loaded(d, bench, "w", min(500, args.tasks), args.concurrency, warm)
        before = await commandstats(raw)
        await asyncio.sleep(1.0)
        run.idle_commands = (await commandstats(raw) - before).total() / 1.0
        before = await commandstats(raw)
        await loaded(d, bench, "t", args.tasks, args.concurrency, run)
        run.commands = await commandstats(raw) - before
        run.unloaded = await one_at_a_time(d, bench, "u", args.unloaded)
    return run


def ms(samples: list[float], *points: int) -> str:
    p = percentiles(samples, points)
    return " / ".join(f"{p[q] * 1e3:.2f}" for q in points)


def table(runs: list[Run]) -> None:
    print(
        f"{'queue':<28}{'tasks/s':>9}  {'enqueue ms':>13}  {'to sent ms, loaded':>18}"
        f"  {'to sent ms, one at a time':>25}  {'cmds/task':>9}  {'idle cmds/s':>11}"
    )
    print(f"{'':<28}{'':>9}  {'p50 / p99':>13}  {'p50 / p99':>18}  {'p50 / p95 / p99':>25}")
    for r in runs:
        per_task = f"{r.commands.total() / r.tasks:.1f}" if r.commands else "-"
        idle = f"{r.idle_commands:.0f}" if r.commands else "-"
        print(
            f"{r.label:<28}{r.rate:>9,.0f}  {ms(r.enqueue, 50, 99):>13}  "
            f"{ms(r.to_sent, 50, 99):>18}  {ms(r.unloaded, 50, 95, 99):>25}  "
            f"{per_task:>9}  {idle:>11}"
        )


def breakdown(runs: list[Run]) -> None:
    names = sorted({n for r in runs for n in r.commands}, key=str.lower)
    with_redis = [r for r in runs if r.commands]
    print("\nRedis commands per task (INFO commandstats; script-internal commands included)")
    print(f"{'command':<14}" + "".join(f"{r.label:>28}" for r in with_redis))
    for name in names:
        cells = "".join(f"{r.commands[name] / r.tasks:>28.2f}" for r in with_redis)
        print(f"{name:<14}{cells}")


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    if os.environ.get("REDIS_URL"):
        print("note: REDIS_URL is set; commands per task include any other client's")
    with private_redis() as url:
        dispatch: dict[str, Any] = {"workers": args.workers, "queue_size": 10 * args.tasks}
        config = load_config(
            data={
                "store": {"backend": "redis", "redis_url": url, "key_prefix": "bench:"},
                "dispatch": dispatch,
            },
            env={},
        )
        raw = aioredis.Redis.from_url(url, decode_responses=True)
        print(
            f"redis {url}; {args.tasks} tasks from {args.concurrency} callers, then "
            f"{args.unloaded} one at a time; {args.workers} workers, "
            f"{config.dispatch.partitions} partitions; null provider\n"
        )
        runs = []
        async with MemoryStore(key_prefix="mem:", clock=SystemClock()) as memory:
            runs.append(
                await measure(
                    "in-process, memory store", memory, None, config.dispatch, args, durable=False
                )
            )
        async with RedisStore(config.store, partitions=config.dispatch.partitions) as store:
            runs.append(
                await measure(
                    "in-process, redis store", store, raw, config.dispatch, args, durable=False
                )
            )
            runs.append(
                await measure(
                    "durable (redis streams)", store, raw, config.dispatch, args, durable=True
                )
            )
        await raw.aclose()
    table(runs)
    breakdown(runs)
    memory_run, floor, durable = runs
    ratio = durable.rate / floor.rate
    added = percentiles(durable.unloaded)[50] - percentiles(floor.unloaded)[50]
    print(
        f"\ndurable / in-process (redis store) throughput: {ratio:.2f} "
        f"(goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})"
    )
    print(f"durable / in-process (memory store) throughput: {durable.rate / memory_run.rate:.2f}")
    print(f"latency the durable queue adds, one task at a time (p50): {added * 1e3:+.2f} ms")
    if args.strict and ratio < GOAL:
        raise SystemExit(1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--tasks", type=int, default=5000, help="loaded run (5000)")
    parser.add_argument("--unloaded", type=int, default=500, help="one at a time (500)")
    parser.add_argument("--concurrency", type=int, default=50, help="enqueuing callers (50)")
    parser.add_argument("--workers", type=int, default=4, help="dispatch.workers (4)")
    parser.add_argument("--strict", action="store_true", help="exit 1 below the goal")
    args = parser.parse_args()
    if min(args.tasks, args.unloaded, args.concurrency, args.workers) < 1:
        parser.error("--tasks, --unloaded, --concurrency and --workers must be >= 1")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
