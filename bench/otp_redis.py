"""OTP issue/verify on Redis, standalone and on a Redis Cluster in the same run: round trips
per operation, latency percentiles, throughput.

    python bench/otp_redis.py [--ops 2000] [--concurrency 50]

The cluster (3 primaries, 3 replicas) is started with deploy/redis-cluster.sh on free ports
(or REDIS_CLUSTER_URL names one); the standalone server is private too (or REDIS_URL).

Round trips of one operation are read from MONITOR on every primary: every command a client
sent counts once (an EVALSHA shown as its script's name), a MULTI..EXEC pipeline counts once,
commands a Lua script runs inside Redis do not count. The ``trips/op`` column of the table is
the ``INFO commandstats`` delta over the timed run, summed over the primaries and divided by
the operations, without the commands that otpd's Lua scripts run (they are not round trips)
and without INFO itself.

Delivery uses the in-process queue (``dispatch.durable = false``): the durable queue's
background sweeps would otherwise show up in every count. bench/dispatch_durable.py measures
that queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._redis import percentiles, private_cluster, private_redis
from otpd.app import Otpd
from otpd.config import load_config
from otpd.store.base import OtpRecord
from otpd.store.redis.store import load_script

LUA = Path(__file__).resolve().parent.parent / "otpd" / "store" / "redis" / "lua"
# what the scripts run inside Redis: counted by INFO commandstats, but no round trip
SCRIPT_COMMANDS = frozenset(
    name.lower()
    for script in LUA.glob("*.lua")
    for name in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)", script.read_text())
)


# EVALSHA digests by script name, with and without the Redis 7 shebang line
SCRIPT_NAMES = {
    # SHA-1 because Redis names scripts by it, not for security
    hashlib.sha1(
        load_script(path.stem, shebang=shebang).encode(), usedforsecurity=False
    ).hexdigest(): path.stem
    for path in LUA.glob("*.lua")
    if path.stem != "limits"  # the prelude every script starts with
    for shebang in (False, True)
}
DELIVERY_SCRIPTS = frozenset({"task_update"})  # status 'sending' and 'sent'


@dataclass(frozen=True)
class Row:
    mode: str
    name: str
    concurrency: int
    ops_per_second: float
    p50: float
    p95: float
    p99: float
    trips_per_op: float | None


async def round_trips(raws: list[aioredis.Redis], op: Callable[[], Awaitable[object]]) -> list[str]:
    """The commands clients sent while ``op`` ran, over every server in ``raws``."""
    marker = f"marker-{uuid.uuid4().hex}"
    trips: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        monitors = [await stack.enter_async_context(raw.monitor()) for raw in raws]
        await op()
        for raw, monitor in zip(raws, monitors, strict=True):
            await raw.echo(marker)
            seen: list[tuple[str, str]] = []
            source = ""
            async for event in monitor.listen():
                source = f"{event.get('client_address')}:{event.get('client_port')}"
                if marker in event["command"]:
                    break
                if event.get("client_type") != "lua":
                    seen.append((source, _command(event["command"])))
            in_multi = False
            for src, cmd in seen:
                if src == source:
                    continue  # the measuring connection
                if cmd == "MULTI":
                    in_multi = True
                    trips.append("MULTI..EXEC")
                elif cmd == "EXEC":
                    in_multi = False
                elif not in_multi:
                    trips.append(cmd)
    return trips


def _command(line: str) -> str:
    """``EVALSHA`` as the name of the script it runs, other commands by name."""
    parts = line.split()
    name = parts[0].strip('"').upper()
    if name == "EVALSHA" and len(parts) > 1:
        return SCRIPT_NAMES.get(parts[1].strip('"'), "EVALSHA")
    return name


async def client_commands(raws: list[aioredis.Redis]) -> int:
    """Commands clients sent so far, summed over ``raws`` (see the module docstring)."""
    total = 0
    for raw in raws:
        stats = await raw.info("commandstats")
        for name, values in stats.items():
            command = name.removeprefix("cmdstat_")
            if command.split("|")[0] in SCRIPT_COMMANDS or command == "info":
                continue
            total += int(values["calls"])
    return total


async def timed(
    op: Callable[[], Awaitable[object]], n: int, concurrency: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            t0 = time.perf_counter()
            await op()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return latencies, time.perf_counter() - start


async def primaries(mode: str, url: str) -> list[aioredis.Redis]:
    """One plain client per primary, for MONITOR and INFO."""
    if mode == "standalone":
        return [aioredis.Redis.from_url(url, decode_responses=True)]
    async with RedisCluster.from_url(url) as cluster:
        nodes = [(node.host, int(node.port)) for node in cluster.get_primaries()]
    return [aioredis.Redis(host=host, port=port, decode_responses=True) for host, port in nodes]


# The cluster client's pools (one per node) do not wait for a free connection: past
# store.max_connections a call fails (MaxConnectionsError, 503). An SMS issue reserves its
# limits on several slots at once, so c=50 needs more than the default 50 on a node.
CLUSTER_CONNECTIONS = 500


async def run_mode(mode: str, url: str, ops: int, concurrency: int, outbox: str) -> list[Row]:
    section: dict[str, object] = {"backend": "redis", "mode": mode, "redis_url": url}
    if mode == "cluster":
        section["max_connections"] = CLUSTER_CONNECTIONS
    config = load_config(
        data={
            "store": {**section, "key_prefix": "bench:"},
            "security": {"secret_key": "b" * 48},
            "outbox": {"dir": outbox},
            "otp": {"per_user_hour": 10**6, "per_user_day": 10**6, "per_ip_hour": 10**6},
            "email": {"per_recipient_hour": 10**6, "global_hour": 10**7},
            "sms": {
                "per_recipient_hour": 10**6,
                "global_hour": 10**7,
                "global_day": 10**7,
                "country_hour": 10**7,
                "country_day": 10**7,
                # every code goes to one number range and none is verified: the pumping
                # guard's conversion block would stop the SMS rows (0 turns it off)
                "conversion_min_samples": 0,
            },
            "dispatch": {"workers": 8, "durable": False},
        },
        env={},
    )
    raws = await primaries(mode, url)
    rows: list[Row] = []
    async with Otpd(config) as otpd:
        store = otpd.store
        now = time.time()
        rec = OtpRecord("otp_b", "c" * 64, "email", "login", now, now + 600, 3)
        limits = otpd.limits.otp("rt", "198.51.100.1")

        print(f"{mode}: {url} ({len(raws)} primaries, {config.store.max_connections} connections)")
        print("  round trips of one operation (MONITOR on every primary):")

        def show(
            name: str, trips: list[str], note: str = "", *, request_only: bool = False
        ) -> None:
            if request_only:  # the delivery runs at once and may land in the window
                late = [t for t in trips if t in DELIVERY_SCRIPTS]
                trips = [t for t in trips if t not in DELIVERY_SCRIPTS]
                if late:
                    note += f" (+{len(late)} of the delivery, not counted)"
            print(f"    {name:<28} {len(trips)}  {trips}{'  ' + note if note else ''}")

        trips = await round_trips(raws, lambda: store.issue_otp("rt", rec, limits, now))
        show("store.issue_otp (3 limits)", trips)
        trips = await round_trips(raws, lambda: store.verify_otp("rt", "login", "c" * 64, now))
        show("store.verify_otp", trips)

        async def issue_email() -> object:
            return await otpd.otp.issue(
                user_id="rt2", channel="email", email="a@example.com", client_ip="198.51.100.1"
            )

        trips = await round_trips(raws, issue_email)
        show("OtpService.issue (email)", trips, "(code + task)", request_only=True)
        await otpd.dispatcher.wait_idle()
        trips = await round_trips(
            raws, lambda: otpd.otp.issue(user_id="rt3", channel="sms", phone="+14155552671")
        )
        show("OtpService.issue (sms)", trips, "(guard counters inside)", request_only=True)
        await otpd.dispatcher.wait_idle()
        trips = await round_trips(raws, lambda: otpd.otp.verify(user_id="rt2", code="000000"))
        show("OtpService.verify", trips)

        async def deliver_one() -> None:
            before = len(list(Path(outbox).glob("*.eml")))
            await issue_email()
            await otpd.dispatcher.wait_idle()
            assert len(list(Path(outbox).glob("*.eml"))) == before + 1

        show("issue + deliver (email)", await round_trips(raws, deliver_one))
        print("      = code script, task record, then status 'sending' and 'sent'")
        if mode == "cluster":
            print("        (on a cluster, plus one reservation per other slot a limit lives on)")

        counter = iter(range(10**9))

        def store_issue() -> Awaitable[object]:
            i = next(counter)
            r = OtpRecord(f"otp_{i}", "c" * 64, "email", "login", now, now + 600, 3)
            u = f"u{i % 5000}"
            return store.issue_otp(u, r, otpd.limits.otp(u, None), now)

        def store_verify() -> Awaitable[object]:
            i = next(counter)
            return store.verify_otp(f"u{i % 5000}", "login", "d" * 64, now)

        async def measure(
            name: str, op: Callable[[], Awaitable[object]], conc: int, *, settle: bool = False
        ) -> None:
            before = await client_commands(raws)
            lat, elapsed = await timed(op, ops, conc)
            if settle:  # the deliveries the operations queued are part of their cost
                await otpd.dispatcher.wait_idle()
            trips = (await client_commands(raws) - before) / ops
            p = percentiles(lat)
            rows.append(Row(mode, name, conc, ops / elapsed, p[50], p[95], p[99], trips))

        for conc in (1, concurrency):
            await measure("store.issue_otp", store_issue, conc)
            await measure("store.verify_otp", store_verify, conc)

        users = iter(range(10**9))

        def service_issue() -> Awaitable[object]:
            return otpd.otp.issue(user_id=f"s{next(users)}", channel="sms", phone="+14155552671")

        await measure("OtpService.issue+deliver", service_issue, concurrency, settle=True)
    for raw in raws:
        await raw.aclose()
    return rows


def print_table(rows: list[Row]) -> None:
    print(
        f"  {'mode':<11}{'operation':<26}{'c':>3}{'ops/s':>10}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'trips/op':>10}"
    )
    for row in sorted(rows, key=lambda r: (r.name, r.concurrency, r.mode != "standalone")):
        trips = "-" if row.trips_per_op is None else f"{row.trips_per_op:.2f}"
        print(
            f"  {row.mode:<11}{row.name:<26}{row.concurrency:>3}{row.ops_per_second:>10,.0f}"
            f"{row.p50 * 1e3:>9.3f}{row.p95 * 1e3:>9.3f}{row.p99 * 1e3:>9.3f}{trips:>10}"
        )


async def main(ops: int, concurrency: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    print(f"{ops} ops per measurement, concurrency 1 and {concurrency}")
    rows: list[Row] = []
    with private_redis() as url, tempfile.TemporaryDirectory() as outbox:
        rows += await run_mode("standalone", url, ops, concurrency, outbox)
    with private_cluster() as url, tempfile.TemporaryDirectory() as outbox:
        rows += await run_mode("cluster", url, ops, concurrency, outbox)
    print("latency and throughput (trips/op: INFO commandstats deltas over the primaries / ops):")
    print_table(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.concurrency))
