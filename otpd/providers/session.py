"""One aiohttp ClientSession shared by the REST providers, resolving DNS without threads."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver

from otpd.providers.dns import AsyncioResolver

__all__ = ["SharedSession"]


class SharedSession:
    """Holds the session; providers read :attr:`session` only after the daemon opened it.

    DNS goes through :class:`~otpd.providers.dns.AsyncioResolver` instead of the default
    resolver, which would run ``getaddrinfo`` on a thread.
    """

    def __init__(
        self,
        *,
        total_timeout: float = 15.0,
        limit: int = 100,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._resolver = resolver
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, connect=5.0)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("the shared HTTP session is already open")
        connector = aiohttp.TCPConnector(
            resolver=self._resolver or AsyncioResolver(), limit=self._limit, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, raise_for_status=False
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the shared HTTP session is not open")
        return self._session
