"""DNS for aiohttp without threads.

aiohttp's default resolver runs ``getaddrinfo`` on the loop's thread pool, and aiodns
runs c-ares with an event thread. otpd runs one event loop and no threads, so the shared
HTTP session, the AWS clients and the SMTP pool resolve through dnspython's pure-asyncio
stub resolver instead. IP literals and ``/etc/hosts`` entries are answered locally.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = ["AsyncioResolver", "read_hosts"]


def read_hosts(path: str = "/etc/hosts") -> dict[str, list[str]]:
    """Hostname -> addresses from a hosts file (read once, at start-up)."""
    table: dict[str, list[str]] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return table
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        for name in fields[1:]:
            table.setdefault(name.lower(), []).append(fields[0])
    return table


class AsyncioResolver(AbstractResolver):
    """An aiohttp resolver on ``dns.asyncresolver``: UDP/TCP sockets on the event loop."""

    def __init__(
        self,
        *,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 5.0,
        hosts: dict[str, list[str]] | None = None,
    ) -> None:
        configure = nameservers is None
        self._resolver = dns.asyncresolver.Resolver(configure=configure)
        if nameservers is not None:
            self._resolver.nameservers = nameservers
        self._resolver.port = port
        self._resolver.lifetime = timeout
        self._hosts = read_hosts() if hosts is None else hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._local(host)
        if addresses is None:
            addresses = await self._query(host, family)
        results: list[ResolveResult] = []
        for address in addresses:
            ip = ipaddress.ip_address(address)
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise OSError(socket.EAI_NONAME, f"no address for {host!r}")
        return results

    def _local(self, host: str) -> list[str] | None:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        return self._hosts.get(host.lower().rstrip("."))

    async def _query(self, host: str, family: socket.AddressFamily) -> list[str]:
        rdtypes = {socket.AF_INET: ["A"], socket.AF_INET6: ["AAAA"]}.get(family, ["A", "AAAA"])
        found: list[str] = []
        last_error: Exception | None = None
        for rdtype in rdtypes:
            try:
                answer: Any = await self._resolver.resolve(host, rdtype, search=True)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                last_error = exc
                continue
            except dns.exception.DNSException as exc:
                raise OSError(socket.EAI_AGAIN, f"DNS lookup of {host!r} failed: {exc}") from exc
            found += [rr.to_text() for rr in answer]
        if not found and last_error is not None:
            raise OSError(socket.EAI_NONAME, f"no address for {host!r}") from last_error
        return found

    async def close(self) -> None:
        return None
