"""SMTP pipelining (RFC 2920): otpd's pooled SmtpProvider with smtp.pipelining on vs off.

The sink is aiosmtpd inside this process (asyncio, no threads), advertising PIPELINING and
answering at once. Between the pool and the sink sits a TCP proxy that holds every chunk
for half of ``--rtt-ms`` in each direction, in order, as a network with that round-trip
time would: the sink itself is not slowed down. The proxy also counts round trips (a
server chunk after a client chunk, per connection). Prints messages/s for both modes and
the ratio against the goal, and exits 1 if the goal is missed (2 if the run fails).

    .venv/bin/python bench/smtp_pipelining.py [--messages 400] [--pool 5] [--rtt-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.smtp_throughput import SENDER, drive, message, pct
from otpd.clock import SystemClock
from otpd.config import SmtpConfig
from otpd.logs import configure_logging
from otpd.providers.smtp import SmtpProvider

GOAL = 1.6  # pipelined / non-pipelined messages per second at 20 ms RTT


class Sink:
    """aiosmtpd hooks: advertise PIPELINING, count what arrives."""

    def __init__(self) -> None:
        self.messages = 0
        self.connections = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        return "250 2.0.0 queued"


@dataclass
class Link:
    """One proxied connection: its direction of travel last seen, and its round trips."""

    last: str = ""
    round_trips: int = 0


class LatencyProxy:
    """Forwards each chunk ``one_way`` seconds after it arrived, keeping order per direction."""

    def __init__(self, upstream: int, one_way: float) -> None:
        self.upstream = upstream
        self.one_way = one_way
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def round_trips(self) -> int:
        return sum(link.round_trips for link in self.links)

    def reset(self) -> None:
        self.links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        link = Link()
        self.links.append(link)
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, ">", link)),
            asyncio.create_task(self._pump(up_reader, writer, "<", link)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        direction: str,
        link: Link,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while data := await source.read(65536):
                if direction == "<" and link.last == ">":
                    link.round_trips += 1
                link.last = direction
                queue.put_nowait((loop.time() + self.one_way, data))
        except ConnectionError:
            pass
        finally:
            queue.put_nowait((loop.time() + self.one_way, b""))
            try:
                await delivery
            except ConnectionError:
                pass
            finally:
                delivery.cancel()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@dataclass
class Run:
    label: str
    messages: int
    connections: int
    seconds: float
    latencies: list[float]
    round_trips: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def run_mode(
    label: str, *, pipelining: bool, proxy_port: int, sink: Sink, proxy: LatencyProxy, args: Any
) -> Run:
    config = SmtpConfig(
        host="127.0.0.1",
        port=proxy_port,
        tls="none",
        pool_size=args.pool,
        timeout_seconds=10.0,
        pipelining=pipelining,
    )
    sink.messages = sink.connections = 0
    proxy.reset()
    async with SmtpProvider(config, SENDER, SystemClock()) as provider:
        # open the pool's connections first: the table compares warm sessions
        await asyncio.gather(*(provider.send(message(i)) for i in range(args.pool)))
        warm_trips = proxy.round_trips
        sink.messages = 0
        seconds, latencies = await drive(
            args.messages, args.pool, lambda i: provider.send(message(i))
        )
        trips = proxy.round_trips - warm_trips
    if sink.messages != args.messages:
        raise RuntimeError(f"{label}: the sink got {sink.messages} of {args.messages} messages")
    return Run(label, args.messages, len(proxy.links), seconds, latencies, trips)


async def main(args: argparse.Namespace) -> bool:
    loop = asyncio.get_running_loop()
    sink = Sink()

    def factory() -> SMTP:
        sink.connections += 1
        return SMTP(sink, hostname="sink.bench", ident="sink", loop=loop)

    server = await loop.create_server(factory, "127.0.0.1", 0)
    sink_port: int = server.sockets[0].getsockname()[1]
    proxy = LatencyProxy(sink_port, one_way=args.rtt_ms / 2000)
    proxy_port = await proxy.start()
    print(
        f"sink: aiosmtpd on 127.0.0.1:{sink_port} (PIPELINING offered, no reply delay); "
        f"proxy on :{proxy_port} adds {args.rtt_ms / 2:g} ms each way = {args.rtt_ms:g} ms RTT; "
        f"pool {args.pool}, {args.pool} sender tasks, {args.messages} msgs per mode\n"
    )
    try:
        runs = [
            await run_mode(
                "smtp.pipelining = false",
                pipelining=False,
                proxy_port=proxy_port,
                sink=sink,
                proxy=proxy,
                args=args,
            ),
            await run_mode(
                "smtp.pipelining = true",
                pipelining=True,
                proxy_port=proxy_port,
                sink=sink,
                proxy=proxy,
                args=args,
            ),
        ]
    finally:
        await proxy.aclose()
        server.close()
        await server.wait_closed()

    print(
        f"{'':25}{'msgs':>6}{'conns':>7}{'seconds':>9}{'msg/s':>8}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'RTs/msg':>9}"
    )
    for run in runs:
        print(
            f"{run.label:25}{run.messages:>6}{run.connections:>7}{run.seconds:>9.2f}"
            f"{run.rate:>8.1f}{pct(run.latencies, 50) * 1000:>9.1f}"
            f"{pct(run.latencies, 95) * 1000:>9.1f}{run.round_trips / run.messages:>9.2f}"
        )
    plain, pipelined = runs
    ratio = pipelined.rate / plain.rate
    met = ratio >= GOAL
    print(
        f"\npipelined / non-pipelined: {ratio:.2f}x "
        f"(goal >= {GOAL}x at 20 ms RTT, here {args.rtt_ms:g} ms): "
        f"{'met' if met else 'MISSED'}"
    )
    return met


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=400, help="per mode (400)")
    parser.add_argument("--pool", type=int, default=5, help="smtp.pool_size and sender tasks (5)")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="network round trip (20)")
    args = parser.parse_args()
    if min(args.messages, args.pool) < 2 or args.rtt_ms < 0:
        parser.error("--messages and --pool must be >= 2, --rtt-ms >= 0")
    return args


if __name__ == "__main__":
    configure_logging("warning")
    started = time.perf_counter()
    try:
        met = asyncio.run(main(parse_args()))
    except Exception as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"({time.perf_counter() - started:.1f} s)")
    sys.exit(0 if met else 1)
