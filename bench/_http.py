"""An open-loop load generator at a fixed rate that corrects for coordinated omission.

    python bench/_http.py --url http://127.0.0.1:8080/v1/otp/verify --rate 1000 \\
        --seconds 12 --warmup 2 --body '{"user_id":"u-{n}","code":"000000"}' \\
        --header 'Authorization: Bearer KEY' [--modulo 5000]

Request ``i`` is due at ``t0 + i / rate``; its latency runs from that due time to the end
of its response, so a stalled server is charged for every request it held back, as
wrk2 does. ``{n}`` in the body is ``--first`` + ``i`` (``i`` modulo ``--modulo`` when
given). Requests go over a fixed set of keep-alive connections (``--connections``): one
waiting for a free connection is late, and that wait counts. The client is a few lines of
HTTP/1.1 over asyncio streams (Content-Length responses only), far cheaper per request
than a full client, so the generator's own delay stays small. Prints one JSON line with the
percentiles in milliseconds of the requests after the warm-up, and the status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Connection", "OpenLoop", "main"]

POINTS = (50.0, 90.0, 99.0, 99.9)


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            writer, self.writer, self.reader = self.writer, None, None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, raw: bytes) -> int:
        """Send ``raw``, read the whole response; its status."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported")
        if length:
            await self.reader.readexactly(length)
        if close:
            await self.close()
        return status


@dataclass
class Result:
    latencies: list[float]
    statuses: Counter[str]
    late_sends: int  # due requests sent more than 1 ms late by the generator itself
    max_send_lag: float  # the most the generator itself was behind, seconds
    sent: int  # warm-up included
    ok_all: int  # 2xx answers, warm-up included


class OpenLoop:
    """Sends ``rate`` requests a second for ``warmup + seconds``."""

    def __init__(
        self,
        url: str,
        body: str,
        headers: list[str],
        rate: float,
        connections: int,
        modulo: int,
        first: int,
        timeout: float,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        head = [
            f"POST {parts.path or '/'} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            *headers,
        ]
        self.head = "\r\n".join(head)
        self.body = body
        self.rate = rate
        self.connections = connections
        self.modulo = modulo
        self.first = first
        self.timeout = timeout

    def _raw(self, i: int) -> bytes:
        n = self.first + (i % self.modulo if self.modulo else i)
        body = self.body.replace("{n}", str(n)).encode()
        return f"{self.head}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body

    async def run(self, warmup: float, seconds: float) -> Result:
        loop = asyncio.get_running_loop()
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        pool = [Connection(self.host, self.port) for _ in range(self.connections)]
        for conn in pool:
            await conn.open()
            idle.put_nowait(conn)
        skip = int(warmup * self.rate)
        total = skip + int(seconds * self.rate)
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        tasks: set[asyncio.Task[None]] = set()
        ok_all = 0

        async def one(i: int, due: float) -> None:
            conn = await idle.get()
            try:
                async with asyncio.timeout(self.timeout):
                    status = str(await conn.request(self._raw(i)))
            except (OSError, asyncio.IncompleteReadError, TimeoutError, RuntimeError) as exc:
                status = type(exc).__name__
                await conn.close()
            finally:
                idle.put_nowait(conn)
            nonlocal ok_all
            ok_all += status.startswith("2")
            if i >= skip:
                latencies.append(loop.time() - due)
                statuses[status] += 1

        late = 0
        lag = 0.0
        t0 = loop.time() + 0.05
        for i in range(total):
            due = t0 + i / self.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i >= skip:
                lag = max(lag, -delay)
                late += delay < -0.001
            task = asyncio.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks))
        for conn in pool:
            await conn.close()
        return Result(latencies, statuses, late, lag, total, ok_all)


def summary(result: Result, seconds: float) -> dict[str, Any]:
    ordered = sorted(result.latencies)
    out: dict[str, Any] = {
        "requests": len(ordered),
        "rate": len(ordered) / seconds if seconds else 0.0,
        "statuses": dict(result.statuses),
        "late_sends": result.late_sends,
        "max_send_lag_ms": result.max_send_lag * 1000,
        "sent": result.sent,
        "ok_all": result.ok_all,
    }
    for p in POINTS:
        index = min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))
        out[f"p{p:g}_ms"] = ordered[index] * 1000 if ordered else float("nan")
    out["max_ms"] = ordered[-1] * 1000 if ordered else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="JSON text; {n} is the request number")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--modulo", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    gen = OpenLoop(
        args.url,
        args.body,
        args.header,
        args.rate,
        args.connections,
        args.modulo,
        args.first,
        args.timeout,
    )
    started = time.monotonic()
    result = asyncio.run(gen.run(args.warmup, args.seconds))
    out = summary(result, args.seconds)
    out["wall_seconds"] = time.monotonic() - started
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
