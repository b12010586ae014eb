"""Redis failing in the ways a managed Redis does: every one is a 503 ``unavailable`` with
one log line naming the operation and a counter, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from otpd.api.routes import OTPD
from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.errors import UnavailableError
from otpd.redaction import masked_url
from otpd.store.redis import RedisStore
from tests.api.helpers import Client, error_of
from tests.conftest import (
    ConfigFactory,
    free_port,
    open_client,
    redis_binary,
    redis_server,
    wait_for_port,
)


async def serve_on(make_config: ConfigFactory, url: str, clock: FakeClock) -> AsyncIterator[Client]:
    config = make_config("redis", store={"redis_url": url, "socket_timeout_seconds": 1.0})
    async with Otpd(config, clock=clock) as daemon:
        client = await open_client(daemon)
        try:
            yield client
        finally:
            await client.close()


def errors_counted(client: Client, op: str, kind: str) -> float:
    metrics = client.app[OTPD].metrics
    value = metrics.registry.get_sample_value("otpd_store_errors_total", {"op": op, "kind": kind})
    return value or 0.0


async def issue(client: Client) -> Any:
    body = {"user_id": "u1", "channel": "email", "email": "a@example.com"}
    return await client.post("/v1/otp", json=body)


@pytest.fixture
def replica_url(redis_url: str, tmp_path: Path) -> Any:
    """A read-only replica of the session's Redis, as a primary becomes mid-failover."""
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    with redis_server(tmp_path, "--replicaof", "127.0.0.1", port) as url:
        yield url


async def test_a_readonly_replica_answers_503_with_a_log_line_and_a_counter(
    make_config: ConfigFactory, replica_url: str, clock: FakeClock
) -> None:
    with capture_logs() as logs:
        # the durable queue's start-up (its consumer groups) is the first write refused
        async for client in serve_on(make_config, replica_url, clock):
            for _ in range(3):
                await error_of(await issue(client), 503, "unavailable")
            warnings = [e for e in logs if e["event"] == "store.unavailable"]
            assert len(warnings) == 1, logs  # one line when it starts, not one per request
            assert warnings[0]["operation"] in ("create_groups", "put_limited")
            assert warnings[0]["kind"] in ("readonly", "response")
            assert errors_counted(client, "put_limited", warnings[0]["kind"]) == 3
        assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


async def test_out_of_memory_answers_503_with_a_log_line_and_a_counter(
    make_config: ConfigFactory, tmp_path: Path, clock: FakeClock
) -> None:
    # no limit at start (the durable queue creates its consumer groups then); the limit
    # comes below what Redis uses once the daemon runs
    with redis_server(tmp_path, "--maxmemory-policy", "noeviction") as url:
        async for client in serve_on(make_config, url, clock):
            raw = aioredis.Redis.from_url(url)
            with capture_logs() as logs:
                try:
                    # a limit far below what Redis already uses: every writing script is
                    # refused with OOM up front, as on a full Redis
                    await raw.config_set("maxmemory", "10kb")
                finally:
                    await raw.aclose()
                await error_of(await issue(client), 503, "unavailable")
                await error_of(await issue(client), 503, "unavailable")
            # one line when it starts (the queue's background sweep may be the first to
            # meet it), not one per request; every refused request is counted
            (warning,) = [e for e in logs if e["event"] == "store.unavailable"]
            assert warning["kind"] == "oom"
            assert errors_counted(client, "put_limited", "oom") == 2
            assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


async def test_a_redis_that_goes_away_answers_503_and_recovery_is_logged_once(
    make_config: ConfigFactory, tmp_path: Path, clock: FakeClock
) -> None:
    with redis_server(tmp_path) as url:
        async for client in serve_on(make_config, url, clock):
            raw = aioredis.Redis.from_url(url)
            try:
                assert (await issue(client)).status == 202
                await raw.client_pause(1500, all=True)
                with capture_logs() as logs:
                    await error_of(await issue(client), 503, "unavailable")
                    await asyncio.sleep(1.6)
                    assert (await issue(client)).status == 202
            finally:
                await raw.aclose()
            events = [e["event"] for e in logs if e["event"].startswith("store.")]
            assert events == ["store.unavailable", "store.recovered"], logs


def store_up(client: Client) -> float | None:
    value: float | None = client.app[OTPD].metrics.registry.get_sample_value("otpd_store_up")
    return value


@contextlib.contextmanager
def redis_on(port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server on ``port``, so it can be started again on the same one, with an
    append-only file in ``workdir``, so a restart keeps the data (as a managed Redis does)."""
    options = ["--save", "", "--appendonly", "yes", "--dir", str(workdir), "--loglevel", "warning"]
    proc = subprocess.Popen(
        [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_stopped_redis_logs_one_warning_and_one_recovery_and_flips_store_up(
    make_config: ConfigFactory, tmp_path: Path, clock: FakeClock
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with contextlib.ExitStack() as servers:
        servers.enter_context(redis_on(port, tmp_path))
        async for client in serve_on(make_config, url, clock):
            assert (await issue(client)).status == 202
            assert store_up(client) == 1
            with capture_logs() as logs:
                servers.close()  # the redis-server stops
                for _ in range(3):
                    await error_of(await issue(client), 503, "unavailable")
                assert store_up(client) == 0
                servers.enter_context(redis_on(port, tmp_path))
                # the first calls after the restart may still meet a dropped connection
                for _ in range(50):
                    if (await issue(client)).status == 202:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the store never answered after its restart")
                await asyncio.sleep(1.1)  # StoreHealth's quiet time before it says recovered
                assert (await issue(client)).status == 202
            events = [e for e in logs if e["event"].startswith("store.")]
            assert [e["event"] for e in events] == ["store.unavailable", "store.recovered"], events
            assert all(e["log_level"] == "warning" for e in events)
            assert store_up(client) == 1
            # an issue's first call is its issue script: that is the call that fails
            assert errors_counted(client, "put_limited", "connection") >= 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6390/0", "redis://:***@127.0.0.1:6390/0"),
        (
            "rediss://otpd:s3cret@redis.example.net:6380/2",
            "rediss://otpd:***@redis.example.net:6380/2",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
    ],
)
def test_a_store_url_is_shown_with_its_password_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown


async def test_opening_an_unreachable_store_names_it_in_one_line(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    store = RedisStore(make_config("redis", store={"redis_url": url}).store)
    with pytest.raises(UnavailableError) as info:
        await store.__aenter__()
    assert info.value.message == (
        f"cannot reach the store at {masked_url(url)}: Connection refused"
    )
    assert "s3cret" not in info.value.message
