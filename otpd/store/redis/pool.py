"""redis-py's connection pools without their per-call overhead.

On every command redis-py 8's pool takes its lock, runs four observability hooks, an
event dispatch and a probe read under a zero timeout (``can_read``, to catch a connection
given back with a reply still unread): together about as much client CPU as the command's
whole round trip on otpd's hot paths. These pools hand out and take back connections in
plain list operations (nothing awaits between taking one and marking it in use, and the
event loop is the only thread).

What the probe guarded against cannot happen here: redis-py closes a connection whose
command failed, timed out or was cancelled while it was sent or read (``disconnect`` in
``send_packed_command`` and ``read_response``), and a closed one is connected again when
it is next handed out. A connection to a primary the sentinels no longer name is closed
when it is given back, so that no write goes to a demoted primary.

:meth:`~_Lean.run_script` runs a script without the client's command machinery (its retry
wrapper, its timing and error hooks, its response callbacks): the ``EVALSHA`` of every hot
path. The scripts called in one turn of the event loop go out together, one write on one
connection and their replies read in order, so that a busy daemon pays the system calls of
one round trip for many requests (otpd's own form of client-side pipelining). Each command
is packed by :func:`pack`: hiredis's C packer (a tenth of the time of redis-py's for the
~120 arguments of an issue script), with the same bytes as redis-py's encoder.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT

__all__ = ["LeanPool", "LeanSentinelPool", "pack"]


# an unconnected redis-py connection, for its (Python) packer alone
_REDIS_PY = Connection()


def pack(*args: EncodableT) -> bytes:
    """``args`` as one RESP command: the bytes of redis-py's ``Connection.pack_command``,
    and its ``DataError`` for a type it does not encode. hiredis packs the plain types
    (``str``, ``bytes``, ``int``, ``float``) in C; what it refuses (``bool``, an
    ``IntEnum``, a ``bytearray``) goes to redis-py's own packer."""
    try:
        # its stub types a one-item tuple; it takes any number of arguments
        packed: bytes = pack_command(args)  # type: ignore[arg-type]
    except TypeError:
        return b"".join(_REDIS_PY.pack_command(*args))
    return packed


class _Call:
    """One script call of a batch: its command and the future its caller awaits."""

    __slots__ = ("command", "future", "sha", "source")

    def __init__(self, sha: str, source: EncodableT, command: bytes) -> None:
        self.sha, self.source, self.command = sha, source, command
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


class _Batch:
    """The script calls of one turn of the event loop, sent together by one task."""

    __slots__ = ("calls", "task")

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.task: asyncio.Task[None] | None = None

    def given_up(self) -> None:
        """A caller gave up (its wait was cancelled): once every caller of a sent batch
        has, its task is cancelled (no one waits for those replies; its connection is
        closed)."""
        task = self.task
        if task is not None and not task.done() and all(c.future.done() for c in self.calls):
            task.cancel()

    def fail(self, exc: BaseException) -> None:
        for call in self.calls:
            _settle(call.future, exc)


class _Lean(ConnectionPool):
    # how long one batch may take, from waiting for a connection to its last reply (the
    # store's socket_timeout_seconds; None: no limit)
    deadline: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch: _Batch | None = None
        self._exchanges: set[asyncio.Task[None]] = set()
        self._freed: collections.deque[asyncio.Future[None]] = collections.deque()

    async def get_connection(
        self, command_name: str | None = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        conn: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        if not conn.is_connected:
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await self.release(conn)
                raise
        return conn

    async def release(self, connection: AbstractConnection) -> None:
        try:
            stale = connection.should_reconnect()  # type: ignore[no-untyped-call]
            if stale or not self._current(connection):
                await connection.disconnect(nowait=True)
        finally:
            self._in_use_connections.remove(connection)
            self._available_connections.append(connection)
            # every batch waiting for a connection looks again (one woken but then past
            # its deadline must not leave the others waiting for the next release)
            while self._freed:
                waiter = self._freed.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    def _current(self, connection: AbstractConnection) -> bool:
        return True

    async def disconnect(self, inuse_connections: bool = True) -> None:
        if inuse_connections:
            # closing: no batch goes on waiting for replies nobody will read
            exchanges = list(self._exchanges)
            for task in exchanges:
                task.cancel()
            await asyncio.gather(*exchanges, return_exceptions=True)
        await super().disconnect(inuse_connections)

    async def run_script(
        self, sha: str, source: EncodableT, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """The reply of ``EVALSHA sha`` on ``keys`` and ``args``.

        The calls made in one turn of the event loop go out as one batch: their commands
        in one write on one connection, their replies read in order (one system call
        each way for the batch instead of one a call; Redis runs each script on its own
        as when they come one by one). When the server does not hold a script (a
        restart, a failover, a ``SCRIPT FLUSH``), ``SCRIPT LOAD source`` and then that
        ``EVALSHA`` again on the same connection, as redis-py's scripts do (the
        documented ACL allows ``SCRIPT LOAD``, not ``EVAL``). An error reply is raised
        as redis-py's exception for it, to its own caller alone.

        Nothing is sent twice: when a batch's connection fails (an idle one the server
        closed, a lost server) every call of the batch not yet answered fails, as a
        command of the client does, and the connection is connected again when next
        handed out. A script that ran but whose reply was lost must not run again (a
        verify would count the attempt twice). A call cancelled before its batch is
        sent is not sent; once every caller of a sent batch has given up, the batch is
        cancelled and its connection closed, as redis-py closes a connection whose
        command was cancelled midway."""
        call = _Call(sha, source, pack("EVALSHA", sha, len(keys), *keys, *args))
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            # its first step runs after the callbacks of this turn: they join the batch
            task = asyncio.create_task(self._exchange(batch), name="otpd-redis-batch")
            self._exchanges.add(task)
            task.add_done_callback(self._exchanges.discard)
        batch.calls.append(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            batch.given_up()
            raise

    async def _exchange(self, batch: _Batch) -> None:
        """Send ``batch`` on one connection and hand each reply to its caller."""
        if self._batch is batch:
            self._batch = None  # later calls make the next batch
        batch.calls = [call for call in batch.calls if not call.future.done()]
        if not batch.calls:
            return
        batch.task = asyncio.current_task()
        conn: AbstractConnection | None = None
        try:
            async with asyncio.timeout(self.deadline):
                conn = await self._connection()
                await _exchange_on(conn, batch.calls)
        except asyncio.CancelledError:
            batch.fail(RedisConnectionError("the batch was given up or the store closed"))
            raise
        except BaseException as exc:
            batch.fail(exc)
        finally:
            if conn is not None:
                await self.release(conn)

    async def _connection(self) -> AbstractConnection:
        """A free connection, waiting for one while every connection is busy (a caller
        that gave up leaves its batch holding one until the batch ends)."""
        while not self._available_connections and len(self._in_use_connections) >= (
            self.max_connections
        ):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._freed.append(waiter)
            await waiter
        return await self.get_connection()


async def _exchange_on(conn: AbstractConnection, calls: list[_Call]) -> None:
    # a failure or a cancellation while sending or reading closes the connection (redis-py)
    await conn.send_packed_command([call.command for call in calls], False)
    unknown: list[_Call] = []
    for call in calls:
        reply = await _read(conn)
        if isinstance(reply, NoScriptError):
            unknown.append(call)  # not run: the server did not hold it
        else:
            _settle(call.future, reply)
    if not unknown:
        return
    sources = {call.sha: call.source for call in unknown}
    load = [pack("SCRIPT", "LOAD", source) for source in sources.values()]
    await conn.send_packed_command(load + [call.command for call in unknown], False)
    # every reply is read, whatever failed: none may be left for the next batch
    loaded = [await _read(conn) for _ in load]
    refused = next((r for r in loaded if isinstance(r, ResponseError)), None)
    for call in unknown:
        reply = await _read(conn)
        # a script that could not be loaded: the refusal is its error
        lost = refused is not None and isinstance(reply, NoScriptError)
        _settle(call.future, refused if lost else reply)


async def _read(conn: AbstractConnection) -> Any:
    """The next reply; an error reply as its exception, returned (the connection serves
    on after it), not raised."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # its caller gave up
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
        # marked as seen: a caller cancelled before it resumed never reads it, and asyncio
        # would log the unread exception as an error
        future.exception()
    else:
        future.set_result(reply)


class LeanPool(_Lean):
    """A :class:`~redis.asyncio.ConnectionPool` for one server."""


class LeanSentinelPool(_Lean, SentinelConnectionPool):
    """A :class:`~redis.asyncio.sentinel.SentinelConnectionPool` (the primary of a
    sentinel-watched service)."""

    def _current(self, connection: AbstractConnection) -> bool:
        master = self.master_address
        host, port = getattr(connection, "host", None), getattr(connection, "port", None)
        return master is None or master == (host, port)
