"""SMTP throughput: otpd's pooled SmtpProvider vs a new aiosmtplib connection per message.

The sink is aiosmtpd inside this process (asyncio, no threads) and holds every reply for
``--delay-ms`` to stand in for a relay across a network. Prints messages/s, the ratio,
per-message latency percentiles, and how close the pool gets to its theoretical limit
(pool size / time per message on one connection, measured sequentially).

    .venv/bin/python bench/smtp_throughput.py [--messages 1000] [--pool 5] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from otpd.clock import SystemClock
from otpd.config import EmailConfig, SmtpConfig
from otpd.logs import configure_logging
from otpd.models import Channel, Message
from otpd.providers.mime import build_email
from otpd.providers.smtp import SmtpProvider

SENDER = EmailConfig(from_address="no-reply@otpd.bench", from_name="otpd bench")
EHLO_NAME = "otpd.bench"  # given explicitly: aiosmtplib would otherwise getfqdn() in a thread


class SlowSMTP(SMTP):
    """aiosmtpd that waits ``delay`` seconds before the last line of every reply."""

    def __init__(self, handler: Any, *, delay: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.delay = delay

    async def push(self, status: Any) -> None:
        line = status.encode() if isinstance(status, str) else bytes(status)
        if line[3:4] != b"-":  # "250-..." continues a multi-line reply; "250 ..." ends it
            await asyncio.sleep(self.delay)
        await super().push(status)


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.connections = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        return "250 2.0.0 queued"


def message(i: int) -> Message:
    return Message(
        channel=Channel.EMAIL,
        to=f"user{i}@example.com",
        subject="Your sign-in code",
        text=f"Your code is {i:06d}.",
        html=f"<p>Your code is <b>{i:06d}</b>.</p>",
        tag="otp_code",
    )


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def drive(
    count: int, tasks: int, send: Callable[[int], Awaitable[object]]
) -> tuple[float, list[float]]:
    """Send ``count`` messages from ``tasks`` concurrent tasks; wall time and latencies."""
    latencies: list[float] = []
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            started = time.perf_counter()
            await send(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(worker())
    return time.perf_counter() - started, latencies


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    counter = Counter()

    def factory() -> SMTP:
        counter.connections += 1
        return SlowSMTP(
            counter, delay=args.delay_ms / 1000, hostname="sink.bench", ident="sink", loop=loop
        )

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    tasks = args.tasks or args.pool
    print(
        f"sink: aiosmtpd on 127.0.0.1:{port}, +{args.delay_ms:g} ms per reply; "
        f"pool {args.pool}, {tasks} sender tasks"
    )
    try:
        # 1. one connection, messages back to back: the cost of a message on a warm session
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, local_hostname=EHLO_NAME
        )
        await smtp.connect()
        started = time.perf_counter()
        for i in range(args.calibrate):
            email = message(i)
            await smtp.sendmail(SENDER.from_address, [email.to], build_email(email, SENDER).data)
        per_message = (time.perf_counter() - started) / args.calibrate
        await smtp.quit()
        limit = args.pool / per_message
        print(
            f"one connection, sequential: {args.calibrate} msgs, {per_message * 1000:.1f} ms/msg"
            f" ({1 / per_message:.1f} msg/s)"
        )
        print(
            f"theoretical pool limit: {args.pool} / {per_message * 1000:.1f} ms = "
            f"{limit:.1f} msg/s\n"
        )

        # 2. otpd's provider
        config = SmtpConfig(host="127.0.0.1", port=port, tls="none", pool_size=args.pool)
        counter.connections = counter.messages = 0
        async with SmtpProvider(config, SENDER, SystemClock()) as provider:
            pooled_time, pooled = await drive(
                args.messages, tasks, lambda i: provider.send(message(i))
            )
        pooled_conns, pooled_msgs = counter.connections, counter.messages

        # 3. baseline: connect, EHLO, send, QUIT for every message
        async def one_shot(i: int) -> object:
            email = message(i)
            return await aiosmtplib.send(
                build_email(email, SENDER).data,
                sender=SENDER.from_address,
                recipients=[email.to],
                hostname="127.0.0.1",
                port=port,
                start_tls=False,
                local_hostname=EHLO_NAME,
            )

        counter.connections = counter.messages = 0
        base_time, base = await drive(args.baseline_messages, tasks, one_shot)
        base_conns, base_msgs = counter.connections, counter.messages
    finally:
        server.close()
        await server.wait_closed()

    assert pooled_msgs == args.messages
    assert base_msgs == args.baseline_messages
    rows = [
        ("otpd SmtpProvider (pool)", pooled_msgs, pooled_conns, pooled_time, pooled),
        ("new connection per msg", base_msgs, base_conns, base_time, base),
    ]
    print(
        f"{'':26}{'msgs':>6}{'conns':>7}{'seconds':>9}{'msg/s':>8}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    )
    for label, msgs, conns, seconds, lat in rows:
        print(
            f"{label:26}{msgs:>6}{conns:>7}{seconds:>9.2f}{msgs / seconds:>8.1f}"
            f"{pct(lat, 50) * 1000:>9.1f}{pct(lat, 95) * 1000:>9.1f}{pct(lat, 99) * 1000:>9.1f}"
        )
    pooled_rate = pooled_msgs / pooled_time
    base_rate = base_msgs / base_time
    print(f"\notpd / baseline: {pooled_rate / base_rate:.2f}x")
    print(f"otpd vs theoretical pool limit: {pooled_rate / limit:.1%} of {limit:.1f} msg/s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=1000, help="through otpd (1000)")
    parser.add_argument(
        "--baseline-messages",
        type=int,
        default=250,
        help="through new connections (250: enough for a stable rate, keeps the run short)",
    )
    parser.add_argument("--pool", type=int, default=5, help="smtp.pool_size (5)")
    parser.add_argument("--tasks", type=int, default=0, help="sender tasks (default: --pool)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="per SMTP reply (20)")
    parser.add_argument("--calibrate", type=int, default=50, help="sequential messages (50)")
    args = parser.parse_args()
    if min(args.messages, args.baseline_messages, args.pool, args.calibrate) < 2:
        parser.error("--messages, --baseline-messages, --pool and --calibrate must be >= 2")
    return args


if __name__ == "__main__":
    configure_logging("warning")
    asyncio.run(main(parse_args()))
