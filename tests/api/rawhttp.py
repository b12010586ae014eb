"""Raw HTTP/1.1 over a socket, for requests aiohttp's client refuses to send, plus a served
daemon with an API key and the hosted page, and a log capture that sees otpd's structlog
lines and every stdlib logger (aiohttp's, asyncio's) at once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from otpd.api import HttpServer
from tests.conftest import ConfigFactory

API_KEY = "raw-http-test-key-0123456789"
AUTH = f"Bearer {API_KEY}"
SUCCESS_URL = "https://app.example.com/welcome"
FAILURE_URL = "https://app.example.com/link-expired"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)


class Closed(Exception):
    """The server closed the connection before a complete response arrived."""


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    """One response (Content-Length framed, or read to the end when there is none);
    interim 1xx answers (``100 Continue``) are skipped."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        while head.startswith(b"HTTP/1.1 1"):
            head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Closed(repr(exc)) from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if head_only or status in (204, 304):
        return RawResponse(status, headers, b"")
    try:
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Closed(repr(exc)) from None
    return RawResponse(status, headers, body)


async def exchange(
    port: int, data: bytes, *, head_only: bool = False, timeout: float = 10.0
) -> RawResponse:
    """Send ``data`` on a new connection and read the first response."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            return await read_response(reader, head_only=head_only)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    length: bool = True,
) -> bytes:
    """A request in bytes, with ``Content-Length`` of ``body`` unless ``length`` is off."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length and body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def served_config(make_config: ConfigFactory, backend: str = "memory", **server: Any) -> Any:
    """A daemon's config for raw-HTTP tests: an API key, the hosted page on, ``server``
    overrides."""
    return make_config(
        backend,
        server={"host": "127.0.0.1", "port": 0, **server},
        auth={"keys": [{"name": "fuzz", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]},
        links={
            "base_url": "http://127.0.0.1:8080",
            "hosted": True,
            "success_url": SUCCESS_URL,
            "failure_url": FAILURE_URL,
        },
    )


@contextlib.asynccontextmanager
async def serving(config: Any) -> AsyncIterator[HttpServer]:
    async with HttpServer(config, port=0) as server:
        yield server


@dataclass
class Logs:
    """What was logged during a :func:`captured_logs` block."""

    structlog_lines: list[MutableMapping[str, Any]]
    records: list[logging.LogRecord] = field(default_factory=list)

    def errors(self) -> list[str]:
        """Every error or critical line, from structlog and from the stdlib."""
        bad = [
            f"structlog {e.get('log_level')}: {e.get('event')} {e}"
            for e in self.structlog_lines
            if e.get("log_level") in ("error", "critical", "exception", "fatal")
        ]
        bad += [
            f"{r.name} {r.levelname}: {r.getMessage()} {r.exc_info!r}"
            for r in self.records
            if r.levelno >= logging.ERROR
        ]
        return bad


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured_logs() -> Iterator[Logs]:
    """structlog's lines and the stdlib's records (root logger, all levels)."""
    handler = _Keep()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with structlog.testing.capture_logs() as lines:
            logs = Logs(lines, handler.records)
            yield logs
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
