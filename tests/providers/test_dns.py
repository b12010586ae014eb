"""HTTP providers resolve names on the event loop: no thread is ever started."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator

import dns.message
import dns.rcode
import dns.rrset
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from otpd.providers.dns import AsyncioResolver, read_hosts
from otpd.providers.session import SharedSession


class _DnsServer(asyncio.DatagramProtocol):
    """A tiny authoritative server: ``records`` name -> IPv4, NXDOMAIN otherwise."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector datagram transport does not subclass asyncio.DatagramTransport
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text()
        self.queries.append(f"{name} {dns.rdatatype.to_text(question.rdtype)}")
        if name in self.records:
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", self.records[name]))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[tuple[_DnsServer, int]]:
    loop = asyncio.get_running_loop()
    server = _DnsServer({"api.example.test.": "127.0.0.1"})
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield server, port
    finally:
        transport.close()


async def test_ip_literals_and_hosts_entries_need_no_query() -> None:
    resolver = AsyncioResolver(nameservers=["192.0.2.1"], hosts={"relay.local": ["10.1.2.3"]})
    [v4] = await resolver.resolve("127.0.0.1", 443)
    [v6] = await resolver.resolve("::1", 443, socket.AF_INET6)
    [hosted] = await resolver.resolve("Relay.Local", 25)
    assert (v4["host"], v4["port"], v4["family"]) == ("127.0.0.1", 443, socket.AF_INET)
    assert v6["host"] == "::1"
    assert hosted["host"] == "10.1.2.3"


async def test_names_resolve_over_udp_on_the_event_loop(dns_server: tuple[_DnsServer, int]) -> None:
    server, port = dns_server
    before = threading.active_count()
    resolver = AsyncioResolver(nameservers=["127.0.0.1"], port=port, hosts={})
    [result] = await resolver.resolve("api.example.test", 443)
    assert result["host"] == "127.0.0.1"
    assert server.queries == ["api.example.test. A"]
    assert threading.active_count() == before


async def test_unknown_name_is_an_oserror(dns_server: tuple[_DnsServer, int]) -> None:
    _, port = dns_server
    resolver = AsyncioResolver(nameservers=["127.0.0.1"], port=port, hosts={}, timeout=2)
    with pytest.raises(OSError, match="no address"):
        await resolver.resolve("missing.example.test", 443)


async def test_shared_session_reaches_a_named_host_without_threads(
    dns_server: tuple[_DnsServer, int],
) -> None:
    _, port = dns_server
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"host": request.host})

    app.router.add_get("/", hello)
    before = threading.active_count()
    async with TestServer(app, host="127.0.0.1") as http_server:
        resolver = AsyncioResolver(nameservers=["127.0.0.1"], port=port, hosts={})
        async with SharedSession(resolver=resolver) as shared:
            url = f"http://api.example.test:{http_server.port}/"
            async with shared.session.get(url) as resp:
                assert resp.status == 200
                assert (await resp.json())["host"].startswith("api.example.test")
    assert threading.active_count() == before


def test_hosts_file_parsing_ignores_comments_and_blank_lines(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "hosts"
    path.write_text("# comment\n\n127.0.0.1 localhost loopback # trailing\n::1 localhost\n")
    assert read_hosts(str(path)) == {
        "localhost": ["127.0.0.1", "::1"],
        "loopback": ["127.0.0.1"],
    }
