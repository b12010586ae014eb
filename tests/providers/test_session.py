"""The shared HTTP session: which proxy the environment names for a URL, what it refuses,
why aiohttp's own ``trust_env`` is not used, and the trust it checks certificates with."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import AsyncIterator

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from otpd.errors import ConfigError
from otpd.providers.session import EnvProxies, SharedSession

PROXIES = {
    "https": "http://user:pw@proxy.internal:3128",
    "http": "http://proxy.internal:8080",
    "no": "localhost, .corp.example,10.0.0.0/8,[::1]:8443,mock.test:9000",
}


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("url", "proxy"),
    [
        ("https://api.twilio.com/2010-04-01", "http://proxy.internal:3128"),
        ("http://rest.nexmo.com/sms/json", "http://proxy.internal:8080"),
        ("https://localhost:8443/", None),
        ("https://mail.corp.example/", None),
        ("https://corp.example/", None),
        ("https://notcorp.example/", "http://proxy.internal:3128"),
        ("https://10.20.30.40/", None),
        ("https://11.0.0.1/", "http://proxy.internal:3128"),
        ("https://[::1]:8443/", None),
        ("https://[::1]:9443/", "http://proxy.internal:3128"),
        ("http://mock.test:9000/", None),
        ("http://mock.test:9001/", "http://proxy.internal:8080"),
    ],
)
def test_the_proxy_for_a_url_follows_the_scheme_and_no_proxy(url: str, proxy: str | None) -> None:
    chosen = EnvProxies(PROXIES).for_url(URL(url))
    assert (None if chosen is None else str(chosen[0])) == proxy


def test_proxy_credentials_leave_the_url_for_proxy_authorization() -> None:
    chosen = EnvProxies(PROXIES).for_url(URL("https://api.sendgrid.com/v3/mail/send"))
    assert chosen is not None
    url, auth = chosen
    assert url.user is None
    assert auth is not None
    assert (auth.login, auth.password) == ("user", "pw")


def test_no_proxy_star_and_no_variables_at_all_mean_direct() -> None:
    everything = EnvProxies({"https": "http://proxy.internal:3128", "no": "*"})
    assert everything.for_url(URL("https://api.twilio.com/")) is None
    assert not EnvProxies({})
    assert not EnvProxies({"no": "localhost"})


def test_the_environment_is_read_in_either_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "api.twilio.com")
    proxies = EnvProxies()
    assert proxies.for_url(URL("https://api.twilio.com/")) is None
    chosen = proxies.for_url(URL("https://api.sendgrid.com/"))
    assert chosen is not None
    assert str(chosen[0]) == "http://proxy.internal:3128"


@pytest.mark.parametrize(
    "value", ["socks5://user:s3cr3t@proxy:1080", "https://user:s3cr3t@proxy:3128", "proxy:3128"]
)
async def test_a_proxy_otpd_cannot_use_stops_the_session_opening(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # going direct instead would ignore what the operator asked for
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ConfigError) as caught:
        async with SharedSession():
            pass  # pragma: no cover
    assert str(caught.value).startswith("HTTPS_PROXY: must be an http:// proxy URL")
    assert "s3cr3t" not in str(caught.value)


@pytest.fixture
async def hello() -> AsyncIterator[TestServer]:
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/", answer)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


async def test_aiohttp_trust_env_would_start_a_thread(hello: TestServer) -> None:
    # why the session reads the proxy variables itself: aiohttp 3.14 looks them up (and
    # ~/.netrc) with asyncio.to_thread / run_in_executor on every request
    before = threading.active_count()
    async with aiohttp.ClientSession(trust_env=True) as session:
        async with session.get(hello.make_url("/")) as resp:
            assert resp.status == 200
        assert threading.active_count() > before
    await asyncio.get_running_loop().shutdown_default_executor()


async def test_the_shared_session_sends_without_a_thread_when_proxies_are_set(
    monkeypatch: pytest.MonkeyPatch, hello: TestServer
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    before = threading.active_count()
    async with SharedSession() as shared, shared.session.get(hello.make_url("/")) as resp:
        assert await resp.text() == "hello"
    assert threading.active_count() == before


async def test_certificates_are_checked_against_the_given_trust_only() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="secure")

    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
        url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
        async with SharedSession(ssl_context=trust) as shared, shared.session.get(url) as resp:
            assert await resp.text() == "secure"
        async with SharedSession() as shared:  # the system's CAs do not know the test CA
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await shared.session.get(url)
    finally:
        await runner.cleanup()
