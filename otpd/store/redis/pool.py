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

:meth:`~_Lean.run_script` runs one script on one of the pool's connections without the
client's command machinery (its retry wrapper, its timing and error hooks, its response
callbacks): the ``EVALSHA`` of every hot path. Its command is packed by :func:`pack`:
hiredis's C packer (a tenth of the time of redis-py's for the ~120 arguments of an issue
script), with the same bytes as redis-py's encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError
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


class _Lean(ConnectionPool):
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

    def _current(self, connection: AbstractConnection) -> bool:
        return True

    async def run_script(
        self, sha: str, source: EncodableT, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """The reply of ``EVALSHA sha`` on ``keys`` and ``args``. When the server does not
        hold the script (a restart, a failover, a ``SCRIPT FLUSH``), ``SCRIPT LOAD source``
        then ``EVALSHA`` again on the same connection, as redis-py's scripts do (the
        documented ACL allows ``SCRIPT LOAD``, not ``EVAL``). An error reply is raised as
        redis-py's exception for it.

        Nothing is sent twice: a connection that fails (an idle one the server closed)
        fails this call, as a command of the client does, and is connected again when
        next handed out. A script that ran but whose reply was lost must not run again
        (a verify would count the attempt twice)."""
        conn = await self.get_connection()
        try:
            return await _script_on(conn, sha, source, keys, args)
        finally:
            await self.release(conn)


async def _script_on(
    conn: AbstractConnection,
    sha: str,
    source: EncodableT,
    keys: Sequence[str],
    args: Sequence[Any],
) -> Any:
    # a failure or a cancellation while sending or reading closes the connection (redis-py)
    await conn.send_packed_command(pack("EVALSHA", sha, len(keys), *keys, *args), False)
    try:
        return await conn.read_response()
    except NoScriptError:
        pass
    await conn.send_packed_command(pack("SCRIPT", "LOAD", source), False)
    await conn.read_response()
    await conn.send_packed_command(pack("EVALSHA", sha, len(keys), *keys, *args), False)
    return await conn.read_response()


class LeanPool(_Lean):
    """A :class:`~redis.asyncio.ConnectionPool` for one server."""


class LeanSentinelPool(_Lean, SentinelConnectionPool):
    """A :class:`~redis.asyncio.sentinel.SentinelConnectionPool` (the primary of a
    sentinel-watched service)."""

    def _current(self, connection: AbstractConnection) -> bool:
        master = self.master_address
        host, port = getattr(connection, "host", None), getattr(connection, "port", None)
        return master is None or master == (host, port)
