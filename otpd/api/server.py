"""The aiohttp application factory and an embeddable server (``AppRunner`` + ``TCPSite``)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import structlog
from aiohttp import web

from otpd.api.links import link_routes
from otpd.api.middleware import auth_middleware, error_middleware
from otpd.api.routes import OTPD, routes
from otpd.app import Otpd
from otpd.config import is_loopback

__all__ = ["HttpServer", "create_app"]

log = structlog.get_logger("otpd.api")


def create_app(otpd: Otpd) -> web.Application:
    config = otpd.config
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[error_middleware, auth_middleware(config.auth.keys)],
    )
    app[OTPD] = otpd
    app.add_routes(routes)
    app.add_routes(link_routes)
    return app


class HttpServer:
    """Serves ``otpd`` over HTTP until the ``async with`` block ends."""

    def __init__(self, otpd: Otpd, host: str | None = None, port: int | None = None) -> None:
        self.otpd = otpd
        self.host = host or otpd.config.server.host
        self.port = otpd.config.server.port if port is None else port
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("the HTTP server is already running")
        if not self.otpd.config.auth.keys:
            if not is_loopback(self.host):
                raise RuntimeError(
                    "refusing to serve /v1 without API keys on a non-loopback address"
                )
            log.warning("auth.disabled", reason="no auth.keys configured; serving on loopback only")
        runner = web.AppRunner(create_app(self.otpd), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
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

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
