"""Redis failing in the ways a managed Redis does: every one is a 503 ``unavailable`` with
one log line naming the operation and a counter, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from otpd.api.routes import OTPD
from otpd.app import Otpd
from otpd.clock import FakeClock
from tests.api.helpers import Client, error_of
from tests.conftest import ConfigFactory, open_client, redis_server


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
    async for client in serve_on(make_config, replica_url, clock):
        with capture_logs() as logs:
            for _ in range(3):
                await error_of(await issue(client), 503, "unavailable")
        warnings = [e for e in logs if e["event"] == "store.unavailable"]
        assert len(warnings) == 1, logs  # one line when it starts, not one per request
        assert warnings[0]["operation"] == "put_limited"
        assert warnings[0]["kind"] in ("readonly", "response")
        assert errors_counted(client, "put_limited", warnings[0]["kind"]) == 3
        assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


async def test_out_of_memory_answers_503_with_a_log_line_and_a_counter(
    make_config: ConfigFactory, tmp_path: Path, clock: FakeClock
) -> None:
    with redis_server(tmp_path, "--maxmemory", "1mb", "--maxmemory-policy", "noeviction") as url:
        async for client in serve_on(make_config, url, clock):
            raw = aioredis.Redis.from_url(url)
            try:
                # fill it up: writes past maxmemory are refused with OOM
                for i in range(200):
                    try:
                        await raw.set(f"filler:{i}", b"x" * 65536)
                    except aioredis.ResponseError:
                        break
                else:
                    raise AssertionError("Redis never ran out of memory")
            finally:
                await raw.aclose()
            with capture_logs() as logs:
                await error_of(await issue(client), 503, "unavailable")
                await error_of(await issue(client), 503, "unavailable")
            (warning,) = [e for e in logs if e["event"] == "store.unavailable"]
            # scripts may still squeeze in; the task record's write is refused for sure
            assert warning["kind"] == "oom"
            assert warning["operation"] in ("put_limited", "put_task")
            assert errors_counted(client, warning["operation"], "oom") >= 1
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
