"""One aiohttp ClientSession shared by the REST providers, resolving DNS without threads and
sending through the proxy the environment names, also without threads."""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Self
from urllib.request import getproxies_environment

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from otpd.errors import ConfigError
from otpd.providers.dns import AsyncioResolver

__all__ = ["EnvProxies", "SharedSession"]

# the request schemes a proxy variable applies to: HTTP_PROXY and HTTPS_PROXY
_SCHEMES = ("http", "https")
# a proxy URL without its credentials, and the credentials
_Proxy = tuple[URL, aiohttp.BasicAuth | None]
_HOST_PORT = re.compile(r"\[?(?P<host>[^\[\]]*?)\]?(?::(?P<port>\d+))?")


def _no_proxy_entry(entry: str) -> tuple[str, int | None]:
    """One ``NO_PROXY`` entry as (host, port): ``*``, a name (``.`` or ``*.`` before it
    changes nothing: subdomains match either way), an IP address or network (CIDR), each
    optionally with ``:port`` (``[v6]:port`` for IPv6)."""
    entry = entry.strip().lower()
    if entry.count(":") > 1 and not entry.startswith("["):
        return entry, None  # a bare IPv6 address or network
    match = _HOST_PORT.fullmatch(entry)
    if match is None:
        return entry, None
    host = match["host"].removeprefix("*.").lstrip(".")
    return host, int(match["port"]) if match["port"] else None


def _bypasses(entry: tuple[str, int | None], host: str, port: int | None) -> bool:
    name, only_port = entry
    if not name or (only_port is not None and only_port != port):
        return False
    if name == "*":
        return True
    host = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == name or host.endswith("." + name)
    try:
        return address in ipaddress.ip_network(name, strict=False)
    except ValueError:
        return False


class EnvProxies:
    """``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` (upper or lower case, as the stdlib's
    ``getproxies`` reads them), read once; :meth:`for_url` is the proxy for one request URL.

    aiohttp's own ``trust_env=True`` does this lookup with ``asyncio.to_thread`` on every
    request (and reads ``~/.netrc`` on the executor, attaching whatever credentials it holds),
    so the session does the same lookup itself, on the loop, from the values read at open.
    Only ``http://`` proxies are accepted; an ``https://`` target is tunnelled through them
    with ``CONNECT``, the TLS session (and its certificate check) still end to end.
    """

    def __init__(self, proxies: Mapping[str, str] | None = None) -> None:
        proxies = getproxies_environment() if proxies is None else proxies
        self._no_proxy = tuple(_no_proxy_entry(e) for e in proxies.get("no", "").split(","))
        self._proxies: dict[str, _Proxy] = {}
        for scheme in _SCHEMES:
            if value := proxies.get(scheme):
                self._proxies[scheme] = self._parse(scheme, value)

    @staticmethod
    def _parse(scheme: str, value: str) -> _Proxy:
        name = f"{scheme.upper()}_PROXY"
        try:
            url = URL(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: not a URL") from exc
        if url.scheme != "http" or not url.host:
            raise ConfigError(f"{name}: must be an http:// proxy URL such as http://proxy:3128")
        return url.with_user(None), aiohttp.BasicAuth.from_url(url)

    def __bool__(self) -> bool:
        return bool(self._proxies)

    def for_url(self, url: URL) -> _Proxy | None:
        """The proxy (without credentials) and its credentials for a request to ``url``."""
        proxy = self._proxies.get(url.scheme)
        if proxy is None or url.host is None:
            return None
        if any(_bypasses(entry, url.host, url.port) for entry in self._no_proxy):
            return None
        return proxy

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """A client middleware: sets the request's proxy unless the caller chose one."""
        if request.proxy is None and (proxy := self.for_url(request.url)) is not None:
            request.update_proxy(*proxy, None)
        return await handler(request)


class SharedSession:
    """Holds the session; providers read :attr:`session` only after the daemon opened it.

    DNS goes through :class:`~otpd.providers.dns.AsyncioResolver` instead of the default
    resolver, which would run ``getaddrinfo`` on a thread. The proxy variables are read when
    the session opens (see :class:`EnvProxies`). Certificates are checked against the
    system's CAs, or ``ssl_context`` when given (tests trust their own CA with it).
    """

    def __init__(
        self,
        *,
        total_timeout: float = 15.0,
        limit: int = 100,
        resolver: AbstractResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._resolver = resolver
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, connect=5.0)
        self._limit = limit
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("the shared HTTP session is already open")
        proxies = EnvProxies()
        connector = aiohttp.TCPConnector(
            resolver=self._resolver or AsyncioResolver(),
            limit=self._limit,
            ttl_dns_cache=300,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            raise_for_status=False,
            middlewares=(proxies.middleware,) if proxies else (),
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
