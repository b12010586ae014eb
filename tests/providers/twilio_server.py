"""A stand-in for Twilio's Messages API: a real aiohttp server on 127.0.0.1:0 in the test's
event loop, plain HTTP or TLS, that records every request and gives the answer the test
set (a created message unless told otherwise)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = ["MESSAGES_PATH", "FakeTwilio", "Seen", "created"]

MESSAGES_PATH = "/2010-04-01/Accounts/{sid}/Messages.json"


def created(to: str, account_sid: str) -> dict[str, Any]:
    """Twilio's 201 body for a queued message (the fields otpd reads, and a few more)."""
    return {"sid": "SM" + "f" * 32, "status": "queued", "to": to, "account_sid": account_sid}


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    host: str
    authorization: str
    content_type: str
    form: dict[str, str]


class FakeTwilio:
    """``async with FakeTwilio() as twilio``: :attr:`url` serves, :attr:`seen` fills."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self.seen: list[Seen] = []
        self._status = 201
        self._payload: Any = None
        self._body: str | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def answer(self, status: int, payload: Any = None, *, body: str | None = None) -> None:
        """Answer the next requests with ``status`` and a JSON ``payload`` (or raw ``body``)."""
        self._status, self._payload, self._body = status, payload, body

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.seen.append(
            Seen(
                method=request.method,
                path=request.path,
                host=request.host,
                authorization=request.headers.get("Authorization", ""),
                content_type=request.content_type,
                form={k: str(v) for k, v in form.items()},
            )
        )
        if self._body is not None:
            return web.Response(status=self._status, text=self._body, content_type="text/html")
        payload = self._payload
        if payload is None:
            payload = created(str(form.get("To", "")), request.path.split("/")[3])
        return web.json_response(payload, status=self._status)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
