"""Slow clients cannot hold connections: a request head must arrive within
``server.header_timeout_seconds``, a body within ``server.body_timeout_seconds``, and no more
than ``server.max_connections`` connections are open at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
from aiohttp import web

from otpd.api import OtpdAppRunner, create_app
from otpd.api.protocol import OtpdServer
from otpd.config import load_config
from otpd.errors import ConfigError
from tests.api.rawhttp import (
    AUTH,
    captured_logs,
    exchange,
    read_response,
    request,
    served_config,
    serving,
)
from tests.conftest import ConfigFactory

TIMEOUT = 1.0
MARGIN = 1.5  # scheduling on a loaded 2-core machine, 100 dribbling clients included
SLOW = 50


async def slow_client(port: int, head: bytes, trickle: bytes) -> tuple[float, bytes]:
    """Send ``head``, then ``trickle`` a byte every 50 ms until the server hangs up; the
    seconds from the head to the hang-up, and everything the server sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    started = time.monotonic()
    closed_at: list[float] = []
    everything = asyncio.ensure_future(reader.read())  # to the end of the stream
    everything.add_done_callback(lambda _: closed_at.append(time.monotonic()))
    try:
        for byte in trickle:
            if everything.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        try:
            received = await asyncio.wait_for(everything, 30)
        except ConnectionError:
            received = b""
    finally:
        writer.close()
    return closed_at[0] - started, received


def slow_head(port: int) -> Awaitable[tuple[float, bytes]]:
    return slow_client(
        port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: " + b"a" * 5000
    )


def slow_body(port: int) -> Awaitable[tuple[float, bytes]]:
    body = b'{"user_id": "u", "channel": "email", "email": "' + b"a" * 900 + b'"}'
    head = request(
        "POST",
        "/v1/otp",
        headers={
            "Authorization": AUTH,
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
        },
        length=False,
    )
    return slow_client(port, head, body)


def status_of(received: bytes) -> int | None:
    return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.") else None


@pytest.mark.slow
@pytest.mark.timing
async def test_slow_heads_and_bodies_are_cut_off_while_normal_requests_are_served(
    make_config: ConfigFactory,
) -> None:
    config = served_config(
        make_config,
        header_timeout_seconds=TIMEOUT,
        body_timeout_seconds=TIMEOUT,
        max_connections=4 * SLOW,
    )
    with captured_logs() as logs:
        async with serving(config) as server:
            slow = [asyncio.ensure_future(slow_head(server.port)) for _ in range(SLOW)]
            slow += [asyncio.ensure_future(slow_body(server.port)) for _ in range(SLOW)]
            await asyncio.sleep(0.3)
            started = time.monotonic()
            normal = await exchange(server.port, request("GET", "/healthz"))
            assert normal.status == 200
            assert time.monotonic() - started < TIMEOUT
            results = await asyncio.wait_for(asyncio.gather(*slow), TIMEOUT + MARGIN + 10)
    heads, bodies = results[:SLOW], results[SLOW:]
    assert max(t for t, _ in heads) < TIMEOUT + MARGIN, sorted(t for t, _ in heads)[-5:]
    assert max(t for t, _ in bodies) < TIMEOUT + MARGIN, sorted(t for t, _ in bodies)[-5:]
    assert min(t for t, _ in heads) >= TIMEOUT - 0.05
    # each got the uniform 408 before the close
    assert [status_of(r) for _, r in heads + bodies] == [408] * (2 * SLOW)
    assert all(b'"code": "request_timeout"' in r for _, r in heads + bodies)
    assert not logs.errors()


async def test_a_connection_that_sends_nothing_gets_408_in_json(
    make_config: ConfigFactory,
) -> None:
    config = served_config(make_config, header_timeout_seconds=0.3)
    async with serving(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            response = await asyncio.wait_for(read_response(reader), 5)
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
    assert response.status == 408
    assert response.content_type == "application/json"
    assert response.json()["error"]["code"] == "request_timeout"


async def test_keep_alive_gives_each_request_head_its_own_deadline(
    make_config: ConfigFactory,
) -> None:
    """An idle kept-alive connection waits for the keep-alive timeout, not the head
    deadline; the next head then has the full deadline from its first byte."""
    config = served_config(make_config, header_timeout_seconds=0.5)
    async with serving(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for _ in range(2):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_response(reader)).status == 200
                await asyncio.sleep(0.8)  # idle longer than the head deadline
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            await asyncio.sleep(0.8)  # a head half sent, past its deadline
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 408
        finally:
            writer.close()


async def test_connections_over_the_cap_are_refused_while_it_holds(
    make_config: ConfigFactory,
) -> None:
    cap = 5
    config = served_config(make_config, max_connections=cap, header_timeout_seconds=30)
    with captured_logs() as logs:
        async with serving(config) as server:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(cap)]
            try:
                for _ in range(3):
                    refused = await exchange(server.port, request("GET", "/healthz"))
                    assert refused.status == 503
                    assert refused.json()["error"]["code"] == "unavailable"
                # one held connection still works, keep-alive included
                reader, writer = held[0]
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_response(reader)).status == 200
                # closing one frees its place
                held.pop()[1].close()
                for _ in range(100):
                    answer = await exchange(server.port, request("GET", "/healthz"))
                    if answer.status == 200:
                        break
                    await asyncio.sleep(0.02)
                assert answer.status == 200
            finally:
                for _, writer in held:
                    writer.close()
    warnings = [e for e in logs.structlog_lines if e["event"] == "api.connection_limit_reached"]
    assert len(warnings) == 1  # once a minute at most, however many are refused
    assert not logs.errors()


@pytest.mark.slow
async def test_idle_keep_alive_connections_give_way_to_new_clients_at_the_cap(
    make_config: ConfigFactory,
) -> None:
    # one client holding every connection idle between requests locks nobody out
    cap = 5
    config = served_config(make_config, max_connections=cap, header_timeout_seconds=30)
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with captured_logs() as logs:
        async with serving(config) as server:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(cap)]
            try:
                for reader, writer in held:
                    writer.write(healthz)
                    assert (await read_response(reader)).status == 200
                for _ in range(3):  # new clients, which keep their connections too
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    held.append((reader, writer))
                    writer.write(healthz)
                    assert (await read_response(reader)).status == 200
                # the three idle for longest made room: closed by the server
                for reader, _ in held[:3]:
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                # the others are still open and kept alive
                for reader, writer in held[3:cap]:
                    writer.write(healthz)
                    assert (await read_response(reader)).status == 200
                runner = server._runner
                assert runner is not None and isinstance(runner.server, OtpdServer)
                assert runner.server.open_connections == cap  # 3 made room for 3 new ones
            finally:
                for _, writer in held:
                    writer.close()
    assert not logs.errors()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("header_timeout_seconds", 0),
        ("body_timeout_seconds", -1),
        ("keepalive_timeout_seconds", 4000),
        ("max_connections", 0),
    ],
)
def test_server_limits_are_checked_at_load_time_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"server.{key}"):
        load_config(data={"server": {key: value}}, env={})


async def test_embedders_get_the_hardened_protocol_from_otpd_app_runner(
    make_config: ConfigFactory,
) -> None:
    """``OtpdAppRunner`` + ``TCPSite`` over ``create_app``, as the README shows."""
    config = served_config(make_config, header_timeout_seconds=0.3)
    runner = OtpdAppRunner(create_app(config), config.server, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        malformed = await exchange(port, b"GARBAGE\r\n\r\n")
        assert (malformed.status, malformed.content_type) == (400, "application/json")
        assert malformed.json()["error"]["code"] == "bad_request"
        assert (await exchange(port, request("GET", "/healthz"))).status == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 408
        finally:
            writer.close()
    finally:
        await runner.cleanup()
