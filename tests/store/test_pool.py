"""The lean connection pool on a real redis-server: what redis-py's probe read guarded
against (a connection handed out with a reply still unread) cannot happen."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, MaxConnectionsError, ResponseError

from otpd.store.redis.pool import LeanPool, pack


async def test_a_command_cancelled_midway_leaves_no_reply_for_the_next_caller(
    redis_url: str,
) -> None:
    pool = LeanPool.from_url(redis_url, max_connections=1, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.set("lean:k", "mine")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                # the server answers after the caller gave up: that reply must not be read
                # as the answer of the next command on the same (only) connection
                await client.blpop(["lean:empty"], timeout=0.2)
        await asyncio.sleep(0.3)
        assert await client.get("lean:k") == "mine"
        assert await client.echo("next") == "next"
    finally:
        await client.aclose(close_connection_pool=True)


async def test_connections_are_reused_and_never_more_than_the_pool_size(redis_url: str) -> None:
    pool = LeanPool.from_url(redis_url, max_connections=2)
    client = aioredis.Redis(connection_pool=pool)
    try:
        for _ in range(20):
            await client.ping()
        assert len(pool._in_use_connections) == 0
        assert len(pool._available_connections) == 1  # one connection served all 20
        held = [await pool.get_connection(), await pool.get_connection()]
        with pytest.raises(MaxConnectionsError):
            await pool.get_connection()
        for conn in held:
            await pool.release(conn)
        assert await client.ping()
    finally:
        await client.aclose(close_connection_pool=True)


async def test_a_connection_the_server_closed_is_connected_again(redis_url: str) -> None:
    pool = LeanPool.from_url(redis_url, max_connections=1, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.client_setname("lean-victim")
        await client.ping()
        other = aioredis.Redis.from_url(redis_url)
        try:
            killed = await other.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
        finally:
            await other.aclose()
        with pytest.raises(RedisConnectionError):  # the dead connection fails once
            await client.ping()
        assert await client.ping()  # closed by redis-py, connected again by the pool
    finally:
        await client.aclose(close_connection_pool=True)


COUNT = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
async def lean(redis_url: str) -> AsyncIterator[tuple[LeanPool, aioredis.Redis]]:
    """A lean pool of one connection and a client on it."""
    pool = LeanPool.from_url(redis_url, max_connections=1, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    try:
        yield pool, client
    finally:
        await client.aclose(close_connection_pool=True)


async def test_a_script_the_server_does_not_hold_runs_from_its_source_in_the_same_call(
    lean: tuple[LeanPool, aioredis.Redis],
) -> None:
    pool, client = lean
    await client.delete("lean:flushed")
    sha = await client.script_load(COUNT)
    assert await pool.run_script(sha, COUNT, ["lean:flushed"], []) == 1
    await client.script_flush()  # as after a restart or a failover
    assert await pool.run_script(sha, COUNT, ["lean:flushed"], []) == 2  # loaded, run once
    assert await client.script_exists(sha) == [True]  # for the next call
    assert await pool.run_script(sha, COUNT, ["lean:flushed"], []) == 3


async def test_a_scripts_error_reply_is_raised_and_the_connection_serves_on(
    lean: tuple[LeanPool, aioredis.Redis],
) -> None:
    pool, client = lean
    await client.delete("lean:after-error")
    await client.hset("lean:h", "f", "v")
    sha = await client.script_load(COUNT)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pool.run_script(sha, COUNT, ["lean:h"], [])
    assert await pool.run_script(sha, COUNT, ["lean:after-error"], []) == 1


async def test_a_script_cancelled_midway_leaves_no_reply_for_the_next_caller(
    lean: tuple[LeanPool, aioredis.Redis],
) -> None:
    slow = """
local t = redis.call('TIME')
local now
repeat
  now = redis.call('TIME')
until (now[1] - t[1]) * 1000000 + (now[2] - t[2]) > 150000
return 'slow'
"""
    echo = "return ARGV[1]"
    pool, client = lean
    slow_sha, echo_sha = await client.script_load(slow), await client.script_load(echo)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pool.run_script(slow_sha, slow, [], [])
    # the only connection: a kept one would read 'slow' as this call's reply
    assert await pool.run_script(echo_sha, echo, [], ["next"]) == "next"


async def test_a_script_on_a_connection_the_server_closed_fails_once_and_never_runs_twice(
    lean: tuple[LeanPool, aioredis.Redis], redis_url: str
) -> None:
    pool, client = lean
    await client.delete("lean:once")
    sha = await client.script_load(COUNT)
    assert await pool.run_script(sha, COUNT, ["lean:once"], []) == 1
    other = aioredis.Redis.from_url(redis_url)
    try:
        assert await other.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        await other.aclose()
    with pytest.raises(RedisConnectionError):
        await pool.run_script(sha, COUNT, ["lean:once"], [])
    assert await pool.run_script(sha, COUNT, ["lean:once"], []) == 2  # connected again


ECHO = "return ARGV[1]"
SLOW = """
local t = redis.call('TIME')
local now
repeat
  now = redis.call('TIME')
until (now[1] - t[1]) * 1000000 + (now[2] - t[2]) > tonumber(ARGV[1]) * 1000
redis.call('INCR', KEYS[1])
return 'slow'
"""


@pytest.fixture
async def slow(
    lean: tuple[LeanPool, aioredis.Redis],
) -> tuple[LeanPool, aioredis.Redis, str, str]:
    """The one-connection pool with SLOW (its key ``lean:slow`` cleared) and ECHO loaded:
    the pool, its client and the two digests."""
    pool, client = lean
    await client.delete("lean:slow")
    return pool, client, await client.script_load(SLOW), await client.script_load(ECHO)


async def test_the_calls_of_one_turn_go_out_together_on_one_connection_each_with_its_reply(
    lean: tuple[LeanPool, aioredis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, client = lean
    sha = await client.script_load(ECHO)
    before = int((await client.info("stats"))["total_connections_received"])
    sends: list[int] = []
    send = Connection.send_packed_command

    async def counted(conn: Connection, command: object, check_health: bool = True) -> None:
        sends.append(len(command) if isinstance(command, list) else 1)
        await send(conn, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    # twenty at once on a pool of one connection: one batch, not a refusal
    replies = await asyncio.gather(*(pool.run_script(sha, ECHO, [], [f"n{i}"]) for i in range(20)))
    assert sends == [20]  # one write carried all twenty commands
    assert replies == [f"n{i}" for i in range(20)]
    assert int((await client.info("stats"))["total_connections_received"]) == before
    assert len(pool._available_connections) == 1


async def test_an_error_reply_in_a_batch_reaches_its_own_caller_only(
    lean: tuple[LeanPool, aioredis.Redis],
) -> None:
    pool, client = lean
    await client.delete("lean:b1", "lean:b2")
    await client.hset("lean:bh", "f", "v")
    sha = await client.script_load(COUNT)
    replies = await asyncio.gather(
        pool.run_script(sha, COUNT, ["lean:b1"], []),
        pool.run_script(sha, COUNT, ["lean:bh"], []),
        pool.run_script(sha, COUNT, ["lean:b2"], []),
        return_exceptions=True,
    )
    assert replies[0] == 1 and replies[2] == 1
    assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])


async def test_scripts_the_server_lost_run_once_each_within_their_batch(
    lean: tuple[LeanPool, aioredis.Redis],
) -> None:
    pool, client = lean
    keys = [f"lean:lost{i}" for i in range(6)]
    await client.delete(*keys)
    count_sha, echo_sha = await client.script_load(COUNT), await client.script_load(ECHO)
    await client.script_flush()  # as after a restart or a failover
    calls = [pool.run_script(count_sha, COUNT, [key], []) for key in keys]
    calls += [pool.run_script(echo_sha, ECHO, [], [f"e{i}"]) for i in range(3)]
    replies = await asyncio.gather(*calls)
    assert replies == [1] * 6 + ["e0", "e1", "e2"]  # each ran exactly once
    assert await client.script_exists(count_sha, echo_sha) == [True, True]


async def test_a_call_cancelled_before_its_batch_is_sent_never_runs(
    lean: tuple[LeanPool, aioredis.Redis],
) -> None:
    pool, client = lean
    await client.delete("lean:unsent", "lean:sent")
    sha = await client.script_load(COUNT)
    unsent = asyncio.create_task(pool.run_script(sha, COUNT, ["lean:unsent"], []))
    sent = asyncio.create_task(pool.run_script(sha, COUNT, ["lean:sent"], []))
    await asyncio.sleep(0)  # both joined one batch; it is not sent yet
    unsent.cancel()
    assert await sent == 1
    with pytest.raises(asyncio.CancelledError):
        await unsent
    assert await client.get("lean:unsent") is None


async def test_a_batch_whose_callers_all_gave_up_closes_its_connection(
    slow: tuple[LeanPool, aioredis.Redis, str, str],
) -> None:
    pool, _, slow_sha, echo_sha = slow
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await asyncio.gather(
                pool.run_script(slow_sha, SLOW, ["lean:slow"], [150]),
                pool.run_script(slow_sha, SLOW, ["lean:slow"], [0]),
            )
    await asyncio.sleep(0.01)
    assert not pool._exchanges  # not waiting 150 ms for replies nobody reads
    # on the only connection: a kept one would read 'slow' as this call's reply
    assert await pool.run_script(echo_sha, ECHO, [], ["next"]) == "next"


async def test_a_batch_waits_for_a_connection_held_by_another_batch(
    slow: tuple[LeanPool, aioredis.Redis, str, str],
) -> None:
    pool, _, slow_sha, echo_sha = slow
    first = asyncio.create_task(pool.run_script(slow_sha, SLOW, ["lean:slow"], [100]))
    await asyncio.sleep(0.02)  # the first batch holds the only connection
    assert await pool.run_script(echo_sha, ECHO, [], ["second"]) == "second"
    assert first.done() and first.result() == "slow"


async def test_a_batch_past_its_deadline_fails_and_its_connection_is_closed(
    slow: tuple[LeanPool, aioredis.Redis, str, str],
) -> None:
    pool, client, slow_sha, echo_sha = slow
    pool.deadline = 0.05
    with pytest.raises(TimeoutError):
        await pool.run_script(slow_sha, SLOW, ["lean:slow"], [150])
    await asyncio.sleep(0.2)
    assert await pool.run_script(echo_sha, ECHO, [], ["next"]) == "next"
    assert await client.get("lean:slow") == "1"  # it ran once, and only once


async def test_closing_the_pool_fails_the_batches_still_waiting(redis_url: str) -> None:
    pool = LeanPool.from_url(redis_url, max_connections=1, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    slow_sha = await client.script_load(SLOW)
    waiting = asyncio.create_task(pool.run_script(slow_sha, SLOW, ["lean:closing"], [200]))
    await asyncio.sleep(0.02)
    await client.aclose(close_connection_pool=True)
    with pytest.raises(RedisConnectionError):
        await waiting
    assert not pool._exchanges


class _Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


_ARGS = st.lists(
    st.one_of(
        st.text(),
        st.binary(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(min_size=7000, max_size=7001),  # past redis-py's buffer cut-off
        st.sampled_from(_Level),  # hiredis refuses an IntEnum: the Python packer's path
    ),
    max_size=40,
)


@given(_ARGS)
def test_a_packed_command_is_the_bytes_redis_py_would_send(
    args: list[str | bytes | float | _Level],
) -> None:
    connection = Connection()
    try:
        expected = b"".join(connection.pack_command("EVALSHA", *args))
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            pack("EVALSHA", *args)
        return
    assert pack("EVALSHA", *args) == expected


@pytest.mark.parametrize("bad", [None, True, object(), ["x"]])
def test_a_value_redis_py_would_not_encode_is_refused_alike(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("EVALSHA", bad)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        pack("EVALSHA", bad)  # type: ignore[arg-type]


async def test_a_script_that_cannot_be_loaded_fails_its_calls_and_leaves_no_reply_behind(
    lean: tuple[LeanPool, aioredis.Redis],
) -> None:
    pool, client = lean
    broken = "return ("  # SCRIPT LOAD refuses it: the EVALSHA after it answers NOSCRIPT
    echo_sha = await client.script_load(ECHO)
    replies = await asyncio.gather(
        pool.run_script("0" * 40, broken, [], []),
        pool.run_script("0" * 40, broken, [], []),
        return_exceptions=True,
    )
    for reply in replies:
        assert isinstance(reply, ResponseError) and "compiling" in str(reply).lower(), reply
    # the only connection: an unread reply would be taken for this one
    assert await pool.run_script(echo_sha, ECHO, [], ["next"]) == "next"
