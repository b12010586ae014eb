"""``GET /metrics``: the Prometheus text, behind ``metrics.token`` when one is set, on the
API listener or, with ``metrics.port``, only on a listener of its own."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from otpd.api.middleware import error_middleware, metrics_middleware
from otpd.api.protocol import OtpdAppRunner
from otpd.app import Otpd
from otpd.config import MetricsConfig
from otpd.errors import StartupError, UnauthorizedError

__all__ = ["CONTENT_TYPE", "check_metrics_token", "metrics_listener", "metrics_response"]

log = structlog.get_logger("otpd.api")

CONTENT_TYPE = "text/plain; version=0.0.4"

_LISTENER = web.AppKey("otpd_metrics_listener", Otpd)
"""Set on the app of the metrics listener: the daemon whose metrics it serves."""


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def check_metrics_token(request: web.Request, config: MetricsConfig) -> None:
    """Without ``metrics.token`` anyone who reaches the listener may read; with it, only
    ``Authorization: Bearer <token>``, compared in constant time (as digests, so the
    length of a wrong guess tells nothing either)."""
    if not config.token:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise UnauthorizedError("missing bearer metrics token")
    if not hmac.compare_digest(_digest(given.strip()), _digest(config.token)):
        raise UnauthorizedError("invalid metrics token")


async def metrics_response(request: web.Request, otpd: Otpd) -> web.Response:
    """The answer to ``GET /metrics`` on any listener of ``otpd``: a 404 on the API's
    when ``metrics.port`` gives the metrics a listener of their own."""
    config = otpd.config.metrics
    if config.separate and _LISTENER not in request.app:
        raise web.HTTPNotFound()
    check_metrics_token(request, config)
    body = await otpd.metrics.scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _listener_app(otpd: Otpd) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return await metrics_response(request, otpd)

    app = web.Application(
        middlewares=[metrics_middleware(lambda _: otpd.metrics), error_middleware]
    )
    app[_LISTENER] = otpd
    app.router.add_get("/metrics", metrics)
    return app


def metrics_listener(
    otpd_of: Callable[[], Otpd],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry for an app that serves a daemon (``otpd_of()`` once it is
    open): serves ``/metrics`` on ``metrics.host:metrics.port`` while the app runs."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        otpd = otpd_of()
        config = otpd.config.metrics
        runner = OtpdAppRunner(
            _listener_app(otpd), otpd.config.server, access_log=None, handle_signals=False
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, config.host, config.port).start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            host = f"[{config.host}]" if ":" in config.host else config.host
            raise StartupError(
                f"cannot listen on {host}:{config.port} for metrics: {reason}"
            ) from exc
        log.info("metrics.listening", host=config.host, port=config.port)
        try:
            yield
        finally:
            await runner.cleanup()

    return listener
