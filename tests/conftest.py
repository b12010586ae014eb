"""Real-server fixtures shared by the suite: redis-server on a free port, daemon factories.

Every process and port a fixture starts is stopped by the same fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import Config, load_config
from otpd.store.base import Store
from otpd.store.memory import MemoryStore
from otpd.store.redis import RedisStore
from tests.redis_topologies import ClusterSetup, SentinelSetup, redis_cluster, redis_sentinel

TEST_SECRET = "test-secret-key-0123456789abcdef-0123456789"


def _patch_aioresponses() -> None:
    """aioresponses 0.7.9 builds ClientResponse without ``stream_writer`` (required on
    aiohttp 3.14; upstream pnuckowski/aioresponses#289). Drop once upstream is fixed."""
    try:
        import aioresponses.core as core
        from aiohttp import ClientResponse
    except ImportError:  # pragma: no cover
        return

    class _Writer:
        output_size = 0

    class PatchedResponse(ClientResponse):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("stream_writer", _Writer())
            super().__init__(*args, **kwargs)

    core.ClientResponse = PatchedResponse  # type: ignore[attr-defined]


_patch_aioresponses()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def redis_binary() -> str:
    """The redis-server binary: skipped without one, and failing under ``CI=true``."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = (
            "redis-server not found: install it (apt-get install redis-server) or set "
            "REDIS_URL=redis://host:port/db to run the Redis-backed tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@contextlib.contextmanager
def redis_server(workdir: Path, *options: str, port: int | None = None) -> Iterator[str]:
    """A private redis-server on a free port (or ``port``, to start one again where a
    stopped one listened) with extra ``options``; yields its URL and stops it on exit."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


class RestartableRedis:
    """A private redis-server that a test stops and starts again on the same port, as an
    outage does. Started with :meth:`start` (``options`` as for :func:`redis_server`;
    without ``--appendonly yes`` it comes back empty)."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.workdir = workdir
        self.options = options
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._running: contextlib.ExitStack | None = None

    def start(self) -> None:
        if self._running is not None:
            raise RuntimeError("the redis-server is running")
        stack = contextlib.ExitStack()
        stack.enter_context(redis_server(self.workdir, *self.options, port=self.port))
        self._running = stack

    def stop(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            running.close()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    """A running :class:`RestartableRedis` of the test's own, stopped at the end."""
    server = RestartableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port, or ``REDIS_URL`` when set."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def key_prefix() -> str:
    """A fresh key prefix per test, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over both stores."""
    value: str = request.param
    return value


@pytest.fixture
async def store(
    backend: str, request: pytest.FixtureRequest, key_prefix: str, clock: FakeClock
) -> AsyncIterator[Store]:
    if backend == "memory":
        async with MemoryStore(key_prefix=key_prefix, clock=clock) as mem:
            yield mem
        return
    url = request.getfixturevalue("redis_url")
    cfg = load_config(
        data={"store": {"backend": "redis", "redis_url": url, "key_prefix": key_prefix}}, env={}
    )
    async with RedisStore(cfg.store) as red:
        yield red


ConfigFactory = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path, key_prefix: str, request: pytest.FixtureRequest) -> ConfigFactory:
    """Build a test config: outbox in tmp_path, fixed secret, fast retries.

    ``make_config(backend="redis", otp={"length": 8})`` merges sections over the defaults.
    """

    def factory(backend: str = "memory", **sections: dict[str, Any]) -> Config:
        data: dict[str, dict[str, Any]] = {
            "security": {"secret_key": TEST_SECRET},
            "outbox": {"dir": str(tmp_path / "outbox")},
            "dispatch": {
                "backoff_base_seconds": 0.01,
                "backoff_max_seconds": 0.05,
                "drain_timeout_seconds": 2.0,
            },
            "store": {"backend": backend, "key_prefix": key_prefix},
        }
        if backend == "redis":
            data["store"]["redis_url"] = request.getfixturevalue("redis_url")
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return load_config(data=data, env={})

    return factory


@pytest.fixture
async def otpd(make_config: ConfigFactory, backend: str, clock: FakeClock) -> AsyncIterator[Otpd]:
    """A running daemon (no HTTP) on the parametrized store."""
    async with Otpd(make_config(backend), clock=clock) as daemon:
        yield daemon


async def open_client(daemon: Otpd) -> TestClient[Any, Any]:
    from otpd.api import create_app

    client: TestClient[Any, Any] = TestClient(TestServer(create_app(daemon), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(otpd: Otpd) -> AsyncIterator[TestClient[Any, Any]]:
    """An HTTP client for the parametrized daemon."""
    c = await open_client(otpd)
    try:
        yield c
    finally:
        await c.close()


async def wait_idle(daemon: Otpd, timeout: float = 10.0) -> None:
    """Until every task the daemon accepted is final (the dispatcher idle) and the audit
    records of it are in the store (the trail's writer idle)."""
    async with asyncio.timeout(timeout):
        await daemon.dispatcher.wait_idle()
        await daemon.audit.flush()


Settle = Callable[..., Awaitable[None]]


@pytest.fixture
def settle() -> Settle:
    """``await settle(daemon)``: every accepted task has reached its final status."""
    return wait_idle


def outbox_files(config: Config, suffix: str) -> list[Path]:
    return sorted(Path(config.outbox.dir).glob(f"*{suffix}"))


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server (SES, SNS, ...) in its own process on a free port.

    moto's in-process mock does not work with aiobotocore, so tests talk to it over HTTP.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=30.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


class Moto:
    """The session's moto server: its URL, a state reset, and what it recorded."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def reset(self) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/moto-api/reset") as response,
        ):
            response.raise_for_status()

    async def data(self) -> dict[str, Any]:
        """``/moto-api/data.json``: e.g. ``["ses"]["RawMessage"]``, ``["sns"]["SMS"]``."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/moto-api/data.json") as response,
        ):
            response.raise_for_status()
            data: dict[str, Any] = await response.json(content_type=None)
            return data


@pytest.fixture
async def moto(moto_url: str) -> Moto:
    """The moto server, reset so the test sees only its own calls."""
    server = Moto(moto_url)
    await server.reset()
    return server


@pytest.fixture(scope="session")
def redis_cluster_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """One Redis Cluster (3 primaries, 3 replicas) for the session, started on first use;
    ``.seed_url`` is for ``RedisCluster.from_url``.

    Shared by every test that asks for it, so a test leaves the topology as it found it and
    keeps to its own keys (``key_prefix``). Tests that fail over or kill a node start their
    own with ``with redis_cluster(tmp_path) as cluster:`` (tests.redis_topologies).
    """
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """One primary, one replica and three sentinels (service ``otpd``, quorum 2) for the
    session, started on first use; ``.sentinel_urls`` / ``.sentinel_addresses`` reach them.

    Shared like ``redis_cluster_env``: tests that fail over start their own with
    ``with redis_sentinel(tmp_path) as sentinel:`` (tests.redis_topologies).
    """
    with redis_sentinel(tmp_path_factory.mktemp("redis-sentinel")) as sentinel:
        yield sentinel
