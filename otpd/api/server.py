"""The aiohttp application factory and an embeddable server (``AppRunner`` + ``TCPSite``).

``create_app(config)`` is a plain ``web.Application`` that opens its own :class:`Otpd`
through ``cleanup_ctx``, so ``web.run_app``, gunicorn's aiohttp worker and mounting as a
sub-application all work. ``create_app(otpd)`` serves a daemon its caller already opened.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import structlog
from aiohttp import web

from otpd.api.audit import audit_routes, record_unauthorized
from otpd.api.hosted import HOSTED_ROUTE, hosted_routes
from otpd.api.links import link_routes
from otpd.api.metrics import metrics_listener
from otpd.api.middleware import auth_middleware, error_middleware, metrics_middleware
from otpd.api.openapi import openapi_routes
from otpd.api.protocol import OtpdAppRunner
from otpd.api.routes import OTPD, routes
from otpd.api.sms_blocks import sms_block_routes
from otpd.api.suppressions import suppression_routes
from otpd.api.totp import totp_routes
from otpd.api.webhooks import webhook_routes
from otpd.app import Otpd
from otpd.clock import Clock
from otpd.config import Config, exposure_problem, metrics_exposure_problem
from otpd.errors import ConfigError, StartupError

__all__ = ["HttpServer", "create_app"]

log = structlog.get_logger("otpd.api")


def _mount(app: web.Application, otpd: Otpd) -> None:
    """Tell the link builder where the hosted page is, prefix of a parent app included
    (aiohttp prefixes a sub-application's routes when it is added)."""
    otpd.links.urls.serve_hosted_page(app.router[HOSTED_ROUTE].canonical)


def create_app(source: Config | Otpd, *, clock: Clock | None = None) -> web.Application:
    """The HTTP API over a daemon: opened by the app for a :class:`Config`, or the given
    already-open :class:`Otpd` (which its caller closes)."""
    config = source.config if isinstance(source, Otpd) else source
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            metrics_middleware(lambda request: request.app[OTPD].metrics),
            error_middleware,
            auth_middleware(config.auth.keys, on_refused=record_unauthorized),
        ],
    )
    if isinstance(source, Otpd):
        app[OTPD] = source

        async def mount(app: web.Application) -> None:
            _mount(app, source)

        app.on_startup.append(mount)
    else:

        async def daemon(app: web.Application) -> AsyncIterator[None]:
            async with Otpd(config, clock=clock) as otpd:
                _mount(app, otpd)
                app[OTPD] = otpd
                yield

        app.cleanup_ctx.append(daemon)
    app.add_routes(routes)
    app.add_routes(link_routes)
    app.add_routes(audit_routes)
    app.add_routes(totp_routes)
    app.add_routes(suppression_routes)
    app.add_routes(sms_block_routes)
    app.add_routes(hosted_routes)
    app.add_routes(openapi_routes)
    app.add_routes(webhook_routes)
    if config.metrics.separate:  # after the daemon's context: it needs the open daemon
        app.cleanup_ctx.append(metrics_listener(lambda: app[OTPD]))
    return app


class HttpServer:
    """Serves otpd over HTTP until the ``async with`` block ends.

    Given a :class:`Config`, the server's app opens (and closes) its own daemon; given an
    open :class:`Otpd`, it serves that one. ``port=0`` binds a free port (see :attr:`url`).
    ``reuse_port`` sets ``SO_REUSEPORT``: processes that all set it share one port, and the
    kernel spreads new connections over them (``otpd serve --processes N``).
    It runs the hardened protocol of :mod:`otpd.api.protocol` (request-head and body
    deadlines, ``server.max_connections``, JSON answers to malformed HTTP).
    """

    def __init__(
        self,
        source: Config | Otpd,
        host: str | None = None,
        port: int | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.source = source
        config = source.config if isinstance(source, Otpd) else source
        self.config = config
        self.host = host or config.server.host
        self.port = config.server.port if port is None else port
        self.reuse_port = reuse_port
        self._runner: OtpdAppRunner | None = None

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("the HTTP server is already running")
        exposed = exposure_problem(self.host, bool(self.config.auth.keys))
        if exposed is not None:
            raise ConfigError.from_problems([exposed])
        exposed = metrics_exposure_problem(self.config, self.host)
        if exposed is not None:
            raise ConfigError.from_problems([exposed])
        if not self.config.auth.keys:
            log.warning("auth.disabled", reason="no auth.keys configured; serving on loopback only")
        runner = OtpdAppRunner(
            self._app(), self.config.server, access_log=None, handle_signals=False
        )
        try:
            await runner.setup()
        except BaseException:  # a later startup step failed: close what opened before it
            await runner.cleanup()
            raise
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_port=self.reuse_port or None)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {self._address}: {reason}") from exc
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address: Any = runner.addresses[0]
        self.port = int(address[1])
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

    def _app(self) -> web.Application:
        """The application served (the whole API here; see :mod:`otpd.api.health`)."""
        return create_app(self.source)

    @property
    def otpd(self) -> Otpd:
        """The daemon being served (while the server runs)."""
        if self._runner is None:
            raise RuntimeError("the HTTP server is not running")
        return self._runner.app[OTPD]

    @property
    def _address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self._address}"
