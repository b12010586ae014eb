"""A bounded pool of persistent aiosmtplib connections to one SMTP relay.

Connections are opened on demand, up to ``smtp.pool_size``, and reused across messages.
A connection that sat idle longer than ``smtp.idle_check_seconds`` answers a NOOP before
it carries a message; a broken one is dropped and replaced. Everything runs on the event
loop: aiosmtplib is always given an EHLO name and a TLS context, because without them it
calls ``socket.getfqdn`` and builds the context in a worker thread, and a relay given by
name is resolved with :class:`~otpd.providers.dns.AsyncioResolver`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import structlog
from aiohttp.abc import AbstractResolver

from otpd.clock import Clock
from otpd.config import SmtpConfig, is_loopback
from otpd.providers.dns import AsyncioResolver
from otpd.providers.smtp.tls import make_tls_context

__all__ = ["PooledConnection", "SmtpPool", "ehlo_name"]

log = structlog.get_logger("otpd.smtp")


def ehlo_name(from_address: str) -> str:
    """The name we greet the relay with: the sender's domain, or ``localhost``."""
    # A stable FQDN we know without a DNS lookup (socket.getfqdn blocks, which is why
    # aiosmtplib would run it in a thread).
    domain = from_address.rpartition("@")[2].strip()
    try:
        name = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        return "localhost"
    return name


@dataclass(eq=False, slots=True)
class PooledConnection:
    """One SMTP session of the pool, and what the pool knows about it."""

    smtp: aiosmtplib.SMTP
    last_used: float
    messages: int = 0


class SmtpPool:
    """Up to ``smtp.pool_size`` connections to ``smtp.host``, one sender on each at a time.

    :meth:`checkout` waits for a free slot and hands out a healthy connection; the caller
    gives it back with :meth:`checkin` while its session is usable, or with
    :meth:`discard` once it is not. Both free the slot.
    """

    def __init__(
        self,
        config: SmtpConfig,
        clock: Clock,
        *,
        ehlo_name: str,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._ehlo_name = ehlo_name
        self._resolver = resolver
        self._tls_context: ssl.SSLContext | None = None
        self._slots: asyncio.Semaphore | None = None
        self._idle: deque[PooledConnection] = deque()
        self._live: set[PooledConnection] = set()
        self._waiting = 0
        self._closed = False

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` ran and :meth:`aclose` did not."""
        return self._slots is not None and not self._closed

    async def open(self) -> None:
        cfg = self.config
        if cfg.tls != "none":
            self._tls_context = make_tls_context(cfg)
        elif cfg.username and not is_loopback(cfg.host):
            log.warning("smtp.plaintext_auth", host=cfg.host, hint="set smtp.tls to starttls")
        self._slots = asyncio.Semaphore(cfg.pool_size)
        self._closed = False

    async def aclose(self) -> None:
        """QUIT every idle connection (concurrently), then close all of them."""
        self._closed = True
        idle = list(self._idle)
        self._idle.clear()
        try:
            await asyncio.gather(*(self._quit(conn) for conn in idle))
        finally:
            for conn in list(self._live):
                self._drop(conn, "shutdown")

    def health(self) -> dict[str, Any]:
        """The relay and the pool's numbers, for ``/v1/health/messaging``."""
        self._prune_idle()
        return {
            "host": self.config.host,
            "port": self.config.port,
            "tls": self.config.tls,
            "pool_size": self.config.pool_size,
            "open": len(self._live),
            "idle": len(self._idle),
            "in_use": len(self._live) - len(self._idle),
            "waiting": self._waiting,
        }

    async def checkout(self) -> PooledConnection:
        """A healthy pooled connection, or a new one, once a slot is free."""
        slots = self._slots
        if slots is None:
            raise RuntimeError("the SMTP pool is not open")
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await self._take()
        except BaseException:
            slots.release()
            raise

    def checkin(self, conn: PooledConnection, *, delivered: bool = False) -> None:
        """Take back a connection whose session may carry another message; free its slot.

        A connection the server closed meanwhile (e.g. after a 421) is dropped instead.
        """
        try:
            if delivered:
                conn.messages += 1
            if self._closed or not conn.smtp.is_connected:
                self._drop(conn, "closed")
            else:
                conn.last_used = self._clock.monotonic()
                self._idle.append(conn)
        finally:
            self._release()

    def discard(self, conn: PooledConnection, why: str) -> None:
        """Close a checked-out connection that cannot be trusted any more; free its slot."""
        try:
            self._drop(conn, why)
        finally:
            self._release()

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def _take(self) -> PooledConnection:
        """A healthy idle connection, or a new one. The caller holds a slot."""
        while self._idle:
            conn = self._idle.pop()  # most recently used first: it is the least stale
            if not conn.smtp.is_connected:
                self._drop(conn, "closed_by_server")
                continue
            if self._clock.monotonic() - conn.last_used > self.config.idle_check_seconds:
                try:
                    await conn.smtp.noop()
                except Exception as exc:
                    self._drop(conn, f"noop_failed:{type(exc).__name__}")
                    continue
                except BaseException:
                    self._drop(conn, "cancelled")
                    raise
            return conn
        return await self._connect()

    async def _socket(self) -> socket.socket | None:
        """A connected socket for a relay given by name, resolved on the event loop.

        asyncio would resolve a host name with ``getaddrinfo`` on a worker thread; an IP
        literal needs no lookup, so then aiosmtplib connects by itself (``None``).
        """
        cfg = self.config
        try:
            ipaddress.ip_address(cfg.host)
        except ValueError:
            pass
        else:
            return None
        if self._resolver is None:
            self._resolver = AsyncioResolver(timeout=cfg.timeout_seconds)
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for addr in await self._resolver.resolve(cfg.host, cfg.port, socket.AF_UNSPEC):
            sock = socket.socket(addr["family"], socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(cfg.timeout_seconds):
                    await loop.sock_connect(sock, (addr["host"], cfg.port))
            except OSError as exc:  # TimeoutError included
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise last or OSError(f"no address for {cfg.host!r}")

    async def _connect(self) -> PooledConnection:
        cfg = self.config
        sock = await self._socket()
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=None if sock is not None else cfg.port,
            sock=sock,
            username=cfg.username or None,
            password=cfg.password if cfg.username else None,
            local_hostname=self._ehlo_name,
            timeout=cfg.timeout_seconds,
            use_tls=cfg.tls == "implicit",
            start_tls=cfg.tls == "starttls",
            validate_certs=cfg.verify_certificate,
            tls_context=self._tls_context,
        )
        await smtp.connect()  # closes itself on any failure
        conn = PooledConnection(smtp, self._clock.monotonic())
        self._live.add(conn)
        log.debug("smtp.connection_opened", open=len(self._live), pool_size=cfg.pool_size)
        return conn

    def _drop(self, conn: PooledConnection, why: str) -> None:
        if conn in self._live:
            self._live.discard(conn)
            log.info("smtp.connection_dropped", why=why, messages=conn.messages)
        conn.smtp.close()

    def _prune_idle(self) -> None:
        for conn in [c for c in self._idle if not c.smtp.is_connected]:
            self._idle.remove(conn)
            self._drop(conn, "closed_by_server")

    async def _quit(self, conn: PooledConnection) -> None:
        try:
            await conn.smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass  # closing anyway
        finally:
            self._drop(conn, "shutdown")
