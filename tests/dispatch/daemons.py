"""Real ``otpd serve`` processes on one Redis (or one Redis Cluster), a slow SMTP relay
for each, and the HTTP calls the crash tests make: what :mod:`tests.dispatch.test_crash`
is built from.

The relay is aiosmtpd's protocol on the test's own event loop (no Controller, no thread).
It keeps each message the moment its data arrived and only then waits before it replies,
as a relay that queued a message whose reply never reached the sender: the message of a
daemon killed in that window is sent again (by another daemon, or the same one after a
restart), which is what the tests bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.asyncio.cluster import RedisCluster

from otpd.store.keys import KeyLayout
from otpd.store.redis.streams import GROUP
from tests.conftest import TEST_SECRET, free_port
from tests.providers.smtp_server import RecordingHandler, SmtpSink

__all__ = [
    "Daemon",
    "Fleet",
    "SlowRelay",
    "daemon_config",
    "fleet",
    "held_by",
    "post_messages",
    "relay_of",
    "serial_text",
    "start_relay",
    "toml_text",
    "wait_final",
    "wait_for",
]

_SERIAL = re.compile(rb"serial-(\d+)-end")


def serial_text(serial: int) -> str:
    """The text body that names a message (quoted-printable leaves it as it is)."""
    return f"crash test message serial-{serial:06d}-end"


class SlowRelay(RecordingHandler):
    """Keeps every message at once, replies after ``delay`` seconds; the first attempt of
    each serial for which ``fails(serial)`` holds is refused with 451 (nothing kept)."""

    def __init__(self, delay: float, fails: Callable[[int], bool] = lambda _: False) -> None:
        super().__init__()
        self.delay = delay
        self.fails = fails
        self.attempts: Counter[int] = Counter()  # DATA transactions per serial
        self.received: Counter[int] = Counter()  # copies kept per serial
        self.refused: set[int] = set()
        self.open: set[int] = set()  # data in, reply not yet sent

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        found = _SERIAL.search(envelope.original_content or b"")
        assert found is not None, "a message without its serial"
        serial = int(found.group(1))
        self.attempts[serial] += 1
        if self.attempts[serial] == 1 and self.fails(serial):
            self.refused.add(serial)
            await asyncio.sleep(self.delay)
            return "451 4.3.0 try again later"
        self.received[serial] += 1
        self.open.add(serial)
        try:
            # cancelled when the client's connection drops (aiosmtpd cancels the handler)
            await asyncio.sleep(self.delay)
        finally:
            self.open.discard(serial)
        return "250 2.0.0 queued"


async def start_relay(delay: float, fails: Callable[[int], bool] = lambda _: False) -> SmtpSink:
    """A listening :class:`SlowRelay` on 127.0.0.1 (close it with ``aclose``)."""
    return await SmtpSink.start(SlowRelay(delay, fails))


def relay_of(sink: SmtpSink) -> SlowRelay:
    handler = sink.handler
    assert isinstance(handler, SlowRelay)
    return handler


# ---------------------------------------------------------------- config and processes


def daemon_config(
    *, instance_id: str, redis_url: str, smtp_port: int, workdir: Path, **sections: Any
) -> dict[str, dict[str, Any]]:
    """One daemon's settings: SMTP without TLS to ``smtp_port``, the durable queue on
    ``redis_url`` with a short claim time, fast retries, limits out of the way."""
    data: dict[str, dict[str, Any]] = {
        "server": {"port": free_port(), "instance_id": instance_id},
        "store": {"backend": "redis", "redis_url": redis_url},
        "security": {"secret_key": TEST_SECRET},
        "outbox": {"dir": str(workdir / "outbox")},
        "dispatch": {
            "workers": 4,
            "durable": True,
            "claim_idle_seconds": 3.0,
            "provider_timeout_seconds": 2.0,  # x 1 provider: below claim_idle_seconds
            "backoff_base_seconds": 1.0,
            "backoff_max_seconds": 2.0,
            "max_attempts": 5,
            "drain_timeout_seconds": 2.0,
            "partitions": 16,
        },
        "email": {"providers": ["smtp"], "per_recipient_hour": 10**6, "global_hour": 10**7},
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none"},
        # a relay refusing 1 in 10 is no reason to stop using it
        "breaker": {"failure_threshold": 10**6},
        "logging": {"level": "info", "format": "json"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for what these configs hold
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(data: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _otpd_command() -> list[str]:
    script = Path(sys.executable).with_name("otpd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "otpd"]


class Daemon:
    """One ``otpd serve`` process from a config file, logging JSON lines to a file."""

    def __init__(self, name: str, config: dict[str, dict[str, Any]], workdir: Path) -> None:
        self.name = name
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(toml_text(config))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['server']['port']}"

    @property
    def workers(self) -> int:
        workers: int = self.config["dispatch"]["workers"]
        return workers

    def start(self) -> None:
        """Start the process (again, after a kill: same config, same instance id)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTPD_")}
        env["PYTHONUNBUFFERED"] = "1"  # a killed daemon's log is complete up to the kill
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*_otpd_command(), "serve", "--config", str(self.config_path)],
                env=env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until ``/readyz`` answers 200 (store reachable, dispatcher running)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited early:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no acknowledgement, connections cut by the kernel."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a drain), then SIGKILL if it does not exit within ``timeout``."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``name``, over every start."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the line the kill cut off
            if entry.get("event") == name:
                out.append(entry)
        return out


class Fleet:
    """The daemons of one test; every one is stopped when the test ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.daemons: list[Daemon] = []

    def add(self, name: str, *, redis_url: str, smtp_port: int, **sections: Any) -> Daemon:
        """A daemon whose instance id is ``name`` (see :func:`daemon_config`)."""
        config = daemon_config(
            instance_id=name,
            redis_url=redis_url,
            smtp_port=smtp_port,
            workdir=self.workdir,
            **sections,
        )
        daemon = Daemon(name, config, self.workdir)
        self.daemons.append(daemon)
        return daemon

    async def start(self, *daemons: Daemon) -> None:
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            await daemon.wait_ready()

    def close(self) -> None:
        for daemon in self.daemons:
            try:
                daemon.stop(timeout=5.0)
            finally:
                daemon.kill()


@contextmanager
def fleet(workdir: Path) -> Iterator[Fleet]:
    group = Fleet(workdir)
    try:
        yield group
    finally:
        group.close()


# ---------------------------------------------------------------- the queue in Redis


def _client(redis_url: str, cluster: bool) -> aioredis.Redis | RedisCluster:
    if cluster:
        return RedisCluster.from_url(redis_url, decode_responses=True)
    return aioredis.Redis.from_url(redis_url, decode_responses=True)


async def held_by(redis_url: str, consumer: str, config: Mapping[str, Any]) -> dict[str, str]:
    """The tasks whose stream entries ``consumer`` holds (read, not acknowledged), with
    each record's status: after a kill, the ``sending`` ones were in a provider call.

    On a cluster (``store.mode``), ``redis_url`` is a seed node's: each call touches one
    key, so the cluster client routes it to the partition's primary."""
    layout = KeyLayout(config["store"].get("key_prefix", "otpd:"), config["dispatch"]["partitions"])
    cluster = config["store"].get("mode", "standalone") == "cluster"
    held: dict[str, str] = {}
    async with _client(redis_url, cluster) as redis:
        for p in range(layout.partitions):
            key = layout.ready(p)
            pending = await redis.xpending_range(key, GROUP, "-", "+", 10_000, consumer)
            for item in pending:
                entry_id = item["message_id"]
                [(_, fields)] = await redis.xrange(key, entry_id, entry_id) or []
                task_id = str((fields or {})["t"])
                status = await redis.hget(layout.task(task_id), "status")
                held[task_id] = str(status) if status is not None else "gone"
    return held


# ---------------------------------------------------------------- the HTTP API


async def post_messages(
    http: aiohttp.ClientSession, url: str, serials: Iterable[int], concurrency: int = 16
) -> dict[int, str]:
    """``POST /v1/messages`` one raw email per serial, each to its own address; the task
    id of each (every one must be accepted with 202)."""
    accepted: dict[int, str] = {}
    gate = asyncio.Semaphore(concurrency)

    async def send(serial: int) -> None:
        body = {
            "channel": "email",
            "to": f"user{serial}@example.com",
            "subject": f"crash test {serial}",
            "text": serial_text(serial),
        }
        async with gate, http.post(f"{url}/v1/messages", json=body) as resp:
            assert resp.status == 202, await resp.text()
            accepted[serial] = (await resp.json())["task_id"]

    await asyncio.gather(*(send(s) for s in serials))
    return accepted


async def wait_final(
    http: aiohttp.ClientSession,
    url: str,
    task_ids: Iterable[str],
    timeout: float,
    concurrency: int = 32,
) -> dict[str, dict[str, Any]]:
    """Poll ``GET /v1/tasks/{id}`` until every task is ``sent`` or ``failed``; the last
    answer for each (still open ones too, when ``timeout`` runs out)."""
    latest: dict[str, dict[str, Any]] = {}
    waiting = set(task_ids)
    gate = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + timeout

    async def look(task_id: str) -> None:
        async with gate:
            try:
                async with http.get(f"{url}/v1/tasks/{task_id}") as resp:
                    assert resp.status == 200, await resp.text()
                    record: dict[str, Any] = await resp.json()
            except aiohttp.ClientConnectionError:
                return  # a pooled connection to a killed predecessor: ask again
        latest[task_id] = record
        if record["status"] in ("sent", "failed"):
            waiting.discard(task_id)

    while waiting and time.monotonic() < deadline:
        await asyncio.gather(*(look(t) for t in sorted(waiting)))
        if waiting:
            await asyncio.sleep(0.2)
    return latest


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
