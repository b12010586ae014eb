"""The hosted confirmation page (``links.hosted = true``): served by the real HTTP server,
checked with a plain client, then clicked for real in a headless Chromium driven through the
DevTools protocol over aiohttp's websocket client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import structlog
from aiohttp import web

from otpd.api import HOSTED_VERIFY_PATH, HttpServer
from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import load_config
from otpd.errors import ConfigError
from tests.api.helpers import link_in, newest_mail, token_of
from tests.conftest import ConfigFactory, free_port, wait_idle

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)


# ---------------------------------------------------------------- a daemon in hosted mode


@dataclass
class Landing:
    """The caller's success and failure pages; records what the browser sent them."""

    url: str
    hits: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Hosted:
    daemon: Otpd
    url: str
    landing: Landing
    session: aiohttp.ClientSession

    @property
    def success_url(self) -> str:
        return f"{self.landing.url}/welcome"

    @property
    def failure_url(self) -> str:
        return f"{self.landing.url}/link-expired"

    async def mailed_link(self, user_id: str = "u1") -> str:
        """Request a verification by API and read the link from the dev outbox."""
        async with self.session.post(
            f"{self.url}/v1/email-verifications",
            json={"user_id": user_id, "email": f"{user_id}@example.com"},
        ) as resp:
            assert resp.status == 202, await resp.text()
            task_id = (await resp.json())["task_id"]
        await wait_idle(self.daemon)
        async with self.session.get(f"{self.url}/v1/tasks/{task_id}") as resp:
            assert (await resp.json())["status"] == "sent"
        return link_in(newest_mail(self.daemon.config, "email_verification"))

    async def confirm_by_api(self, token: str) -> int:
        async with self.session.post(
            f"{self.url}/v1/email-verifications/confirm", json={"token": token}
        ) as resp:
            return resp.status


async def _landing_server() -> AsyncIterator[Landing]:
    landing = Landing("")

    async def page(request: web.Request) -> web.Response:
        landing.hits.append((request.path, dict(request.headers)))
        landing.arrived.set()
        return web.Response(
            text=f"<!DOCTYPE html><title>{request.path}</title>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/welcome", page)
    app.router.add_get("/link-expired", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    landing.url = f"http://127.0.0.1:{port}"
    try:
        yield landing
    finally:
        await runner.cleanup()


@pytest.fixture
async def hosted(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> AsyncIterator[Hosted]:
    """otpd served for real (``HttpServer``, as in production) with hosted links on."""
    async for landing in _landing_server():
        port = free_port()
        config = make_config(
            backend,
            links={
                "base_url": f"http://127.0.0.1:{port}",
                "hosted": True,
                "success_url": f"{landing.url}/welcome",
                "failure_url": f"{landing.url}/link-expired",
            },
            product={"name": "Acme"},
        )
        async with (
            Otpd(config, clock=clock) as daemon,
            HttpServer(daemon, "127.0.0.1", port) as server,
            aiohttp.ClientSession() as session,
        ):
            yield Hosted(daemon, server.url, landing, session)


# ---------------------------------------------------------------- without a browser


async def test_hosted_page_shows_a_confirm_form_with_strict_headers_and_consumes_nothing(
    hosted: Hosted,
) -> None:
    link = await hosted.mailed_link()
    token = token_of(link)
    assert link == f"{hosted.url}{HOSTED_VERIFY_PATH}?token={token}"
    for _ in range(3):  # a mail scanner may open the link any number of times
        async with hosted.session.get(link) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            html = await resp.text()
            headers = resp.headers
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert re.search(r"style-src 'sha256-[A-Za-z0-9+/=]{44}'", csp)
    assert f"form-action 'self' {hosted.landing.url};" in csp
    assert "frame-ancestors 'none'" in csp
    assert "<script" not in html
    assert '<form method="post" action="/l/verify-email">' in html
    assert f'<input type="hidden" name="token" value="{token}" />' in html
    assert '<html lang="en"' in html
    assert await hosted.confirm_by_api(token) == 200  # still live after the GETs


async def test_hosted_form_post_consumes_the_token_and_redirects_with_303(
    hosted: Hosted,
) -> None:
    token = token_of(await hosted.mailed_link())
    for expected in (hosted.success_url, hosted.failure_url):
        async with hosted.session.post(
            f"{hosted.url}{HOSTED_VERIFY_PATH}", data={"token": token}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == expected
            assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert await hosted.confirm_by_api(token) == 400


@pytest.mark.parametrize("query", ["", "?token=", "?token=abc", "?token=%22%3E%3Cscript%3E"])
async def test_hosted_page_with_a_broken_link_answers_400_without_a_form(
    hosted: Hosted, query: str
) -> None:
    async with hosted.session.get(f"{hosted.url}{HOSTED_VERIFY_PATH}{query}") as resp:
        assert resp.status == 400
        html = await resp.text()
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "This link is not valid" in html
    assert "<form" not in html
    assert "<script" not in html
    assert f'href="{hosted.failure_url}"' in html


async def test_hosted_form_without_a_token_redirects_to_failure(hosted: Hosted) -> None:
    for data in ({}, {"token": "nope"}):
        async with hosted.session.post(
            f"{hosted.url}{HOSTED_VERIFY_PATH}", data=data, allow_redirects=False
        ) as resp:
            assert (resp.status, resp.headers["Location"]) == (303, hosted.failure_url)


async def test_hosted_routes_are_not_found_when_hosted_mode_is_off(
    make_config: ConfigFactory, backend: str
) -> None:
    port = free_port()
    async with (
        Otpd(make_config(backend)) as daemon,
        HttpServer(daemon, "127.0.0.1", port) as server,
        aiohttp.ClientSession() as session,
    ):
        url = f"{server.url}{HOSTED_VERIFY_PATH}"
        async with session.get(f"{url}?token={'a' * 24}.{'A' * 43}") as resp:
            assert resp.status == 404
        async with session.post(url, data={"token": "x"}, allow_redirects=False) as resp:
            assert resp.status == 404


async def test_hosted_page_and_form_never_log_the_token(
    hosted: Hosted, caplog: pytest.LogCaptureFixture
) -> None:
    link = await hosted.mailed_link()
    token = token_of(link)
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        async with hosted.session.get(link) as resp:
            assert resp.status == 200
        async with hosted.session.post(
            f"{hosted.url}{HOSTED_VERIFY_PATH}", data={"token": token}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
        async with hosted.session.post(
            f"{hosted.url}{HOSTED_VERIFY_PATH}", data={"token": token}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
    events = [e["event"] for e in logs]
    assert "audit.email_verification_token_confirmed" in events
    assert "audit.email_verification_token_rejected" in events
    secret = token.split(".")[1]
    assert secret not in repr(logs)
    assert secret not in caplog.text


# ---------------------------------------------------------------- a real browser


def chromium_binary() -> str:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    message = (
        "no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chromium): "
        "the hosted page is not tested in a real browser"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.session_id: str | None = None
        self._next = 0
        self.events: list[dict[str, Any]] = []

    async def _receive(self, timeout: float) -> dict[str, Any]:
        message: dict[str, Any] = await asyncio.wait_for(self.ws.receive_json(), timeout)
        return message

    async def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        self._next += 1
        request: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self.session_id and not method.startswith("Target."):
            request["sessionId"] = self.session_id
        await self.ws.send_json(request)
        while True:
            message = await self._receive(timeout)
            if message.get("id") == self._next:
                assert "error" not in message, (method, message["error"])
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    async def wait_for(self, method: str, timeout: float = 15.0) -> dict[str, Any]:
        """The next ``method`` event (including one that arrived during a call)."""
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                del self.events[: i + 1]
                return event
        while True:
            message = await self._receive(timeout)
            if message.get("method") == method:
                return message
            self.events.append(message)

    async def open_page(self) -> None:
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        self.session_id = attached["sessionId"]
        for domain in ("Page", "Log", "Runtime"):
            await self.call(f"{domain}.enable")

    async def navigate(self, url: str) -> None:
        self.events.clear()
        await self.call("Page.navigate", url=url)
        await self.wait_for("Page.loadEventFired")

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element's box."""
        root = await self.call("DOM.getDocument")
        found = await self.call(
            "DOM.querySelector", nodeId=root["root"]["nodeId"], selector=selector
        )
        assert found["nodeId"], f"{selector} is not on the page"
        quad = (await self.call("DOM.getBoxModel", nodeId=found["nodeId"]))["model"]["content"]
        x = sum(quad[0::2]) / 4
        y = sum(quad[1::2]) / 4
        await self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def current_url(self) -> str:
        history = await self.call("Page.getNavigationHistory")
        url: str = history["entries"][history["currentIndex"]]["url"]
        return url

    async def text(self, selector: str) -> str:
        root = await self.call("DOM.getDocument")
        found = await self.call(
            "DOM.querySelector", nodeId=root["root"]["nodeId"], selector=selector
        )
        html = await self.call("DOM.getOuterHTML", nodeId=found["nodeId"])
        return re.sub(r"<[^>]+>", "", html["outerHTML"]).strip()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium, killed (its whole process group) at teardown."""
    binary = chromium_binary()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its own process group: renderers die with it
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().split()) >= 2:
                break
            if proc.returncode is not None:
                pytest.fail(f"chromium exited with {proc.returncode} before listening")
            await asyncio.sleep(0.05)
        else:
            pytest.fail("chromium did not write DevToolsActivePort within 15 s")
        port, path = port_file.read_text().split()[:2]
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws,
        ):
            devtools = DevTools(ws)
            await devtools.open_page()
            yield devtools
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def csp_violations(devtools: DevTools) -> list[str]:
    texts = [
        str(e.get("params", {}).get("entry", {}).get("text", ""))
        for e in devtools.events
        if e.get("method") == "Log.entryAdded"
    ]
    return [t for t in texts if "Content Security Policy" in t]


async def test_a_click_on_confirm_in_chromium_verifies_and_lands_on_the_success_page(
    hosted: Hosted, browser: DevTools
) -> None:
    link = await hosted.mailed_link()
    token = token_of(link)
    # a mail scanner fetches the link first: that must not burn it
    async with hosted.session.get(link) as resp:
        assert resp.status == 200

    await browser.navigate(link)
    assert await browser.text("h1") == "Confirm your email address"
    assert csp_violations(browser) == []
    await browser.click("#confirm")
    await asyncio.wait_for(hosted.landing.arrived.wait(), 15)
    await browser.wait_for("Page.loadEventFired")

    assert await browser.current_url() == hosted.success_url
    (path, headers), *_ = hosted.landing.hits
    assert path == "/welcome"
    # Referrer-Policy: no-referrer kept the URL with the token from the next site
    assert "Referer" not in headers
    assert csp_violations(browser) == []
    assert await hosted.confirm_by_api(token) == 400  # the click consumed it

    # the same link clicked again, now spent, lands on the failure page
    hosted.landing.arrived.clear()
    await browser.navigate(link)
    await browser.click("#confirm")
    await asyncio.wait_for(hosted.landing.arrived.wait(), 15)
    await browser.wait_for("Page.loadEventFired")
    assert await browser.current_url() == hosted.failure_url


async def test_chromium_shows_the_broken_link_page_without_a_button(
    hosted: Hosted, browser: DevTools
) -> None:
    await browser.navigate(f"{hosted.url}{HOSTED_VERIFY_PATH}?token={quote('<b>x</b>')}")
    assert await browser.text("h1") == "This link is not valid"
    root = await browser.call("DOM.getDocument")
    found = await browser.call(
        "DOM.querySelector", nodeId=root["root"]["nodeId"], selector="#confirm"
    )
    assert found["nodeId"] == 0
    assert csp_violations(browser) == []


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("links", "key"),
    [
        ({"hosted": True}, "links.success_url"),
        ({"hosted": True, "success_url": "https://a.example/ok"}, "links.failure_url"),
        ({"success_url": "/welcome"}, "links.success_url"),
    ],
)
def test_hosted_mode_needs_absolute_success_and_failure_urls(
    links: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data={"links": links}, env={})
    assert info.value.details["key"] == key


def test_production_needs_https_links_and_landing_pages() -> None:
    base = {
        "server": {"env": "production"},
        "security": {
            "secret_key": "s" * 40,
            "encryption_keys": [
                {"id": "k1", "key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
            ],
        },
        "auth": {"keys": [{"name": "web", "sha256": "0" * 64}]},
        "store": {"backend": "redis"},
        "email": {"providers": ["smtp"]},
        "sms": {"providers": ["sns"]},
    }
    for links, key in (
        ({"base_url": "http://otpd.example.com"}, "links.base_url"),
        (
            {
                "base_url": "https://otpd.example.com",
                "hosted": True,
                "success_url": "http://app.example.com/ok",
                "failure_url": "https://app.example.com/no",
            },
            "links.success_url",
        ),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(data={**base, "links": links}, env={})
        assert info.value.details["key"] == key
    ok = {
        "base_url": "https://otpd.example.com",
        "hosted": True,
        "success_url": "https://app.example.com/ok",
        "failure_url": "https://app.example.com/no",
    }
    assert load_config(data={**base, "links": ok}, env={}).links.hosted
