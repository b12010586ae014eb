"""The shared session honours HTTPS_PROXY and NO_PROXY: a provider's request to an https
vendor goes through a real local CONNECT proxy, with the certificate still checked end to
end, or straight to the vendor when NO_PROXY names it; no thread is started either way."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Self

import pytest
import trustme

from otpd.config import TwilioConfig
from otpd.errors import TransientDeliveryError
from otpd.models import Channel, Message
from otpd.providers.dns import AsyncioResolver
from otpd.providers.session import SharedSession
from otpd.providers.twilio import TwilioProvider
from tests.providers import aws
from tests.providers.twilio_server import MESSAGES_PATH, FakeTwilio

# a name only the test resolves: the session through its hosts table, the proxy through its own
VENDOR = "api.twilio.test"
SID = "AC" + "0123456789abcdef" * 2
CODE = "493817"
MESSAGE = Message(channel=Channel.SMS, to="+14155550123", text=f"Your code is {CODE}")


class ConnectProxy:
    """An HTTP proxy that only tunnels: ``CONNECT host:port``, ``200``, then bytes both ways.

    :attr:`requests` records each request line and its headers, :attr:`upstream` the bytes
    the client sent into tunnels; ``hosts`` is the proxy's own name resolution.
    """

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.upstream = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def targets(self) -> list[str]:
        return [target for method, target, _ in self.requests if method == "CONNECT"]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line, *lines = head.split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = dict(h.split(": ", 1) for h in lines if h)
        self.requests.append((method, target, headers))
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(self.hosts.get(host, host), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, self.upstream), self._pipe(up_reader, writer, None)
            )
        finally:
            up_writer.close()

    @staticmethod
    async def _pipe(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray | None
    ) -> None:
        while chunk := await source.read(65536):
            if record is not None:
                record += chunk
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets exactly the proxy variables it is about."""
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trust(ca: trustme.CA) -> ssl.SSLContext:
    """What the session trusts: the test CA only."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(VENDOR).configure_cert(context)
    return context


@pytest.fixture
async def vendor(ca: trustme.CA) -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(tls=server_tls(ca)) as server:
        yield server


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy({VENDOR: "127.0.0.1"}) as server:
        yield server


def session(trust: ssl.SSLContext) -> SharedSession:
    """A session that finds :data:`VENDOR` at 127.0.0.1 without any DNS server."""
    resolver = AsyncioResolver(nameservers=["192.0.2.1"], hosts={VENDOR: ["127.0.0.1"]})
    return SharedSession(resolver=resolver, ssl_context=trust)


def config(vendor: FakeTwilio) -> TwilioConfig:
    return TwilioConfig(
        account_sid=SID,
        auth_token="tok",
        from_number="+14155550100",
        base_url=f"https://{VENDOR}:{vendor.port}",
    )


@pytest.fixture
def no_new_threads() -> Iterator[None]:
    before = threading.active_count(), aws.os_thread_count()
    yield
    after = threading.active_count(), aws.os_thread_count()
    # <=, not ==: a thread another test left behind may end meanwhile
    assert after <= before


@pytest.mark.usefixtures("no_new_threads")
async def test_https_proxy_tunnels_the_providers_request_with_connect(
    monkeypatch: pytest.MonkeyPatch,
    trust: ssl.SSLContext,
    vendor: FakeTwilio,
    proxy: ConnectProxy,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://otpd:proxy-pw@127.0.0.1:{proxy.port}")
    async with session(trust) as http, TwilioProvider(config(vendor), http) as provider:
        result = await provider.send(MESSAGE)

    assert result.message_id == "SM" + "f" * 32
    assert proxy.targets == [f"{VENDOR}:{vendor.port}"]
    [(_, _, headers)] = proxy.requests
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"otpd:proxy-pw").decode()
    [seen] = vendor.seen
    assert (seen.path, seen.form["Body"]) == (MESSAGES_PATH.format(sid=SID), MESSAGE.text)
    # TLS end to end: the proxy carried ciphertext, never the code or the credentials
    assert proxy.upstream
    assert CODE.encode() not in proxy.upstream
    assert base64.b64encode(f"{SID}:tok".encode()) not in proxy.upstream


@pytest.mark.usefixtures("no_new_threads")
@pytest.mark.parametrize("no_proxy", [VENDOR, ".twilio.test", "localhost, *.test", "*"])
async def test_no_proxy_naming_the_vendor_sends_straight_to_it(
    monkeypatch: pytest.MonkeyPatch,
    trust: ssl.SSLContext,
    vendor: FakeTwilio,
    proxy: ConnectProxy,
    no_proxy: str,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    async with session(trust) as http, TwilioProvider(config(vendor), http) as provider:
        await provider.send(MESSAGE)
    assert proxy.requests == []
    assert len(vendor.seen) == 1


async def test_no_proxy_for_another_host_still_proxies(
    monkeypatch: pytest.MonkeyPatch,
    trust: ssl.SSLContext,
    vendor: FakeTwilio,
    proxy: ConnectProxy,
) -> None:
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1,twilio.test.example")
    async with session(trust) as http, TwilioProvider(config(vendor), http) as provider:
        await provider.send(MESSAGE)
    assert proxy.targets == [f"{VENDOR}:{vendor.port}"]


async def test_http_proxy_alone_does_not_carry_https_requests(
    monkeypatch: pytest.MonkeyPatch,
    trust: ssl.SSLContext,
    vendor: FakeTwilio,
    proxy: ConnectProxy,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with session(trust) as http, TwilioProvider(config(vendor), http) as provider:
        await provider.send(MESSAGE)
    assert proxy.requests == []


async def test_the_vendor_certificate_is_still_checked_through_the_tunnel(
    monkeypatch: pytest.MonkeyPatch, trust: ssl.SSLContext, proxy: ConnectProxy
) -> None:
    # a certificate for the right name from a CA the session does not trust
    async with FakeTwilio(tls=server_tls(trustme.CA())) as impostor:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with session(trust) as http, TwilioProvider(config(impostor), http) as provider:
            with pytest.raises(TransientDeliveryError) as caught:
                await provider.send(MESSAGE)
    assert proxy.targets == [f"{VENDOR}:{impostor.port}"]
    assert impostor.seen == []
    assert caught.value.reason == "network"
    assert "Certificate" in caught.value.message
