"""Crashes of real ``otpd serve`` processes on one Redis: every accepted task is still
sent, at least once, and at most the messages in flight at the kill go out twice.

Each daemon sends to its own slow relay (50 ms per message, 1 in 10 refused once with
451), so the test knows which daemon delivered what. The figures each test prints
(``pytest -s``) are what the durable queue's notes quote. The test with two daemons runs
on a Redis Cluster as well (the session's, under a key prefix of its own).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import redis_server
from tests.dispatch.daemons import (
    Daemon,
    SlowRelay,
    fleet,
    held_by,
    post_messages,
    relay_of,
    start_relay,
    wait_final,
    wait_for,
)
from tests.redis_topologies import ClusterSetup

pytestmark = pytest.mark.slow

TASKS = 300
DELAY = 0.05  # seconds the relay takes per message


def refused_once(serial: int) -> bool:
    return serial % 10 == 3


def copies(*relays: SlowRelay) -> Counter[int]:
    total: Counter[int] = Counter()
    for relay in relays:
        total.update(relay.received)
    return total


def claimed(daemon: Daemon) -> int:
    return sum(int(e["entries"]) for e in daemon.events("queue.claimed"))


@dataclass(frozen=True, slots=True)
class Kill:
    """The queue at the moment a daemon was killed."""

    in_flight: frozenset[int]  # serials the daemon had in a provider call
    held: int  # stream entries it held: buffered or in flight
    delivered: int
    retrying: int  # refused once, waiting for their retry
    unsent: int

    def figures(self) -> dict[str, int]:
        return {
            "in_flight_at_kill": len(self.in_flight),
            "held_at_kill": self.held,
            "delivered_at_kill": self.delivered,
            "retrying_at_kill": self.retrying,
            "unsent_at_kill": self.unsent,
        }


async def kill_while_busy(
    daemon: Daemon,
    relay: SlowRelay,
    redis_url: str,
    accepted: dict[int, str],
    others: tuple[SlowRelay, ...] = (),
) -> Kill:
    """SIGKILL ``daemon`` once it has delivered some messages and its ``relay`` holds one
    it has not answered yet; then read what the daemon held from Redis."""
    await wait_for(
        lambda: len(relay.received) >= 20 and bool(relay.open),
        10,
        f"{daemon.name} to have messages in flight",
    )
    daemon.kill()
    # read before anyone claims them: not before claim_idle_seconds (3 s)
    held = await held_by(redis_url, daemon.config["server"]["instance_id"], daemon.config)
    serial_of = {task_id: serial for serial, task_id in accepted.items()}
    delivered = copies(relay, *others)
    refused = set().union(*(r.refused for r in (relay, *others)))
    return Kill(
        in_flight=frozenset(serial_of[t] for t, status in held.items() if status == "sending"),
        held=len(held),
        delivered=len(delivered),
        retrying=len(refused - set(delivered)),
        unsent=len(accepted) - len(delivered),
    )


def report(title: str, **figures: object) -> None:
    print(f"\n{title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def store_of(
    topology: str, request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str
) -> tuple[AbstractContextManager[str], dict[str, Any]]:
    """The Redis URL to give the daemons (a context), and their ``[store]`` settings
    beyond it: a Redis of the test's own, or the session's cluster under the test's own
    ``key_prefix`` (the cluster is started only when a test asks for it)."""
    if topology == "standalone":
        return redis_server(tmp_path), {}
    cluster: ClusterSetup = request.getfixturevalue("redis_cluster_env")
    return nullcontext(cluster.seed_url), {"mode": "cluster", "key_prefix": key_prefix}


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
async def test_the_tasks_of_a_killed_daemon_are_all_sent_by_the_other(
    topology: str, request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str
) -> None:
    server, store = store_of(topology, request, tmp_path, key_prefix)
    started = time.monotonic()  # not the session's cluster starting, on first use
    with server as redis_url, fleet(tmp_path) as daemons:
        sink_a = await start_relay(DELAY, refused_once)
        sink_b = await start_relay(DELAY, refused_once)
        try:
            relay_a, relay_b = relay_of(sink_a), relay_of(sink_b)
            a = daemons.add("a", redis_url=redis_url, smtp_port=sink_a.port, store=store)
            b = daemons.add("b", redis_url=redis_url, smtp_port=sink_b.port, store=store)
            await daemons.start(a, b)
            async with aiohttp.ClientSession() as http:
                accepted = await post_messages(http, a.url, range(TASKS))
                kill = await kill_while_busy(a, relay_a, redis_url, accepted, (relay_b,))
                killed_at = time.monotonic()
                records = await wait_final(http, b.url, accepted.values(), timeout=25)
                finished = time.monotonic() - killed_at
        finally:
            await sink_a.aclose()
            await sink_b.aclose()

    statuses = Counter(r["status"] for r in records.values())
    received = copies(relay_a, relay_b)
    duplicated = {s for s, n in received.items() if n > 1}
    duplicates = sum(received.values()) - len(received)
    report(
        "killed one of two daemons" + (" on a cluster" if topology == "cluster" else ""),
        accepted=len(accepted),
        **kill.figures(),
        delivered=len(received),
        duplicates=duplicates,
        in_flight_bound=a.workers,
        claimed_by_survivor=claimed(b),
        seconds_after_kill=round(finished, 2),
        seconds_total=round(time.monotonic() - started, 2),
    )
    assert kill.unsent > 0 and kill.in_flight, kill
    assert statuses == {"sent": TASKS}, statuses
    assert set(received) == set(range(TASKS))  # each message reached the relays
    # a second copy only of what the killed daemon was sending when it died
    assert duplicated <= kill.in_flight, (duplicated, kill)
    assert duplicates <= len(kill.in_flight) <= a.workers
    assert duplicated <= set(relay_a.received)
    assert claimed(b) >= 1  # its pending entries were taken over


async def test_a_restarted_daemon_sends_what_its_killed_predecessor_held(tmp_path: Path) -> None:
    started = time.monotonic()
    with redis_server(tmp_path) as redis_url, fleet(tmp_path) as daemons:
        sink = await start_relay(DELAY, refused_once)
        try:
            relay = relay_of(sink)
            # the same config file twice: same port, same instance id (a consumer name
            # whose entries are still pending from before the kill)
            a = daemons.add("a", redis_url=redis_url, smtp_port=sink.port)
            await daemons.start(a)
            async with aiohttp.ClientSession() as http:
                accepted = await post_messages(http, a.url, range(TASKS))
                kill = await kill_while_busy(a, relay, redis_url, accepted)
                before = Counter(relay.received)
                killed_at = time.monotonic()
                await daemons.start(a)
                restarted = time.monotonic() - killed_at
            async with aiohttp.ClientSession() as http:
                records = await wait_final(http, a.url, accepted.values(), timeout=25)
                finished = time.monotonic() - killed_at
        finally:
            await sink.aclose()

    statuses = Counter(r["status"] for r in records.values())
    received = copies(relay)
    duplicated = {s for s, n in received.items() if n > 1}
    duplicates = sum(received.values()) - len(received)
    report(
        "killed and restarted the only daemon",
        accepted=len(accepted),
        **kill.figures(),
        delivered=len(received),
        duplicates=duplicates,
        in_flight_bound=a.workers,
        claimed_after_restart=claimed(a),
        seconds_to_restart=round(restarted, 2),
        seconds_after_kill=round(finished, 2),
        seconds_total=round(time.monotonic() - started, 2),
    )
    assert kill.unsent > 0 and kill.in_flight, kill
    assert statuses == {"sent": TASKS}, statuses
    assert set(received) == set(range(TASKS))
    assert duplicated <= kill.in_flight, (duplicated, kill)
    assert duplicates <= len(kill.in_flight) <= a.workers
    assert duplicated <= set(before)  # a second copy only of what went out before the kill
    assert claimed(a) >= 1


async def test_two_daemons_share_the_work_and_send_each_message_exactly_once(
    tmp_path: Path,
) -> None:
    tasks = 1000
    started = time.monotonic()
    with redis_server(tmp_path) as redis_url, fleet(tmp_path) as daemons:
        sink_a = await start_relay(0.01)
        sink_b = await start_relay(0.01)
        try:
            relay_a, relay_b = relay_of(sink_a), relay_of(sink_b)
            a = daemons.add("a", redis_url=redis_url, smtp_port=sink_a.port)
            b = daemons.add("b", redis_url=redis_url, smtp_port=sink_b.port)
            await daemons.start(a, b)
            async with aiohttp.ClientSession() as http:
                # half of the requests to each daemon
                to_a, to_b = await asyncio.gather(
                    post_messages(http, a.url, range(0, tasks, 2)),
                    post_messages(http, b.url, range(1, tasks, 2)),
                )
                accepted = {**to_a, **to_b}
                records = await wait_final(http, a.url, accepted.values(), timeout=25)
        finally:
            await sink_a.aclose()
            await sink_b.aclose()

    statuses = Counter(r["status"] for r in records.values())
    received = copies(relay_a, relay_b)
    by_a, by_b = sum(relay_a.received.values()), sum(relay_b.received.values())
    report(
        "two daemons, no crash",
        accepted=len(accepted),
        delivered=len(received),
        duplicates=sum(received.values()) - len(received),
        sent_by_a=by_a,
        sent_by_b=by_b,
        claimed=claimed(a) + claimed(b),
        seconds_total=round(time.monotonic() - started, 2),
    )
    assert statuses == {"sent": tasks}, statuses
    assert received == Counter(range(tasks))  # every message exactly once
    assert min(by_a, by_b) >= tasks // 5, (by_a, by_b)
    assert claimed(a) + claimed(b) == 0  # a live daemon's entries are never taken over
