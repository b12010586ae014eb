"""OTP issue/verify on Redis: round trips per operation, latency percentiles, throughput.

    python bench/otp_redis.py [--ops 2000] [--concurrency 50]

Round trips are read from MONITOR: every command a client sent counts once, a MULTI..EXEC
pipeline counts once, commands a Lua script runs inside Redis do not count.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._redis import percentiles, private_redis
from otpd.app import Otpd
from otpd.config import load_config
from otpd.store.base import OtpRecord


async def round_trips(raw: aioredis.Redis, op: Callable[[], Awaitable[object]]) -> list[str]:
    marker = f"marker-{uuid.uuid4().hex}"
    async with raw.monitor() as monitor:
        await op()
        await raw.echo(marker)
        seen: list[tuple[str, str]] = []
        async for event in monitor.listen():
            source = f"{event.get('client_address')}:{event.get('client_port')}"
            if marker in event["command"]:
                break
            if event.get("client_type") != "lua":
                seen.append((source, event["command"].split()[0].upper()))
    trips: list[str] = []
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


def report(name: str, latencies: list[float], elapsed: float) -> None:
    p = percentiles(latencies)
    print(
        f"  {name:<28} {len(latencies) / elapsed:>9,.0f} ops/s   "
        f"p50 {p[50] * 1e3:6.3f} ms  p95 {p[95] * 1e3:6.3f} ms  p99 {p[99] * 1e3:6.3f} ms"
    )


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


async def main(ops: int, concurrency: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with private_redis() as url, tempfile.TemporaryDirectory() as outbox:
        config = load_config(
            data={
                "store": {"backend": "redis", "redis_url": url, "key_prefix": "bench:"},
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
                },
                "dispatch": {"workers": 8},
            },
            env={},
        )
        raw = aioredis.Redis.from_url(url, decode_responses=True)
        async with Otpd(config) as otpd:
            store = otpd.store
            now = time.time()
            rec = OtpRecord("otp_b", "c" * 64, "email", "login", now, now + 600, 3)
            limits = otpd.limits.otp("rt", "198.51.100.1")

            print(f"redis {url}, {ops} ops per measurement, concurrency {concurrency}")
            print("round trips per operation (MONITOR):")
            trips = await round_trips(raw, lambda: store.issue_otp("rt", rec, limits, now))
            print(f"  store.issue_otp (3 limits)   {len(trips)}  {trips}")
            trips = await round_trips(raw, lambda: store.verify_otp("rt", "login", "c" * 64, now))
            print(f"  store.verify_otp             {len(trips)}  {trips}")

            async def issue_email() -> object:
                return await otpd.otp.issue(
                    user_id="rt2", channel="email", email="a@example.com", client_ip="198.51.100.1"
                )

            trips = await round_trips(raw, issue_email)
            print(f"  OtpService.issue (email)     {len(trips)}  {trips}  (code + task record)")
            trips = await round_trips(
                raw, lambda: otpd.otp.issue(user_id="rt3", channel="sms", phone="+14155552671")
            )
            print(f"  OtpService.issue (sms)       {len(trips)}  {trips}  (guard counters inside)")
            await asyncio.sleep(0.2)
            trips = await round_trips(raw, lambda: otpd.otp.verify(user_id="rt2", code="000000"))
            print(f"  OtpService.verify            {len(trips)}  {trips}")

            async def deliver_one() -> None:
                before = len(list(Path(outbox).glob("*.eml")))
                await issue_email()
                await otpd.dispatcher.wait_idle()
                assert len(list(Path(outbox).glob("*.eml"))) == before + 1

            trips = await round_trips(raw, deliver_one)
            print(f"  issue + deliver (email)      {len(trips)}  {trips}")
            print("    = code script, task record, then status 'sending' and 'sent'")

            counter = iter(range(10**9))

            def store_issue() -> Awaitable[object]:
                i = next(counter)
                r = OtpRecord(f"otp_{i}", "c" * 64, "email", "login", now, now + 600, 3)
                u = f"u{i % 5000}"
                return store.issue_otp(u, r, otpd.limits.otp(u, None), now)

            def store_verify() -> Awaitable[object]:
                i = next(counter)
                return store.verify_otp(f"u{i % 5000}", "login", "d" * 64, now)

            print("latency and throughput:")
            for conc in (1, concurrency):
                lat, el = await timed(store_issue, ops, conc)
                report(f"store.issue_otp   c={conc}", lat, el)
                lat, el = await timed(store_verify, ops, conc)
                report(f"store.verify_otp  c={conc}", lat, el)

            users = iter(range(10**9))

            def service_issue() -> Awaitable[object]:
                return otpd.otp.issue(
                    user_id=f"s{next(users)}", channel="sms", phone="+14155552671"
                )

            lat, el = await timed(service_issue, ops, concurrency)
            report(f"OtpService.issue  c={concurrency}", lat, el)
            await asyncio.sleep(0.5)
            sent = len(list(Path(outbox).glob("*.txt")))
            print(f"  delivered to the outbox so far: {sent} SMS files")
        await raw.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.concurrency))
