"""What a daemon in the ``worker`` role serves: ``/healthz``, ``/readyz`` and ``/metrics``
only, the same handlers and middlewares as the full API (``metrics.port`` moves
``/metrics`` to a listener of its own here too); every other path is a JSON 404."""

from __future__ import annotations

from aiohttp import web

from otpd.api import routes as api
from otpd.api.metrics import metrics_listener
from otpd.api.middleware import auth_middleware, error_middleware, metrics_middleware
from otpd.api.routes import OTPD
from otpd.api.server import HttpServer
from otpd.app import Otpd

__all__ = ["HealthServer", "create_health_app"]


def create_health_app(otpd: Otpd) -> web.Application:
    """Health, readiness and metrics of an already-open daemon (which its caller closes)."""
    config = otpd.config
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            metrics_middleware(lambda request: request.app[OTPD].metrics),
            error_middleware,
            auth_middleware(config.auth.keys),
        ],
    )
    app[OTPD] = otpd
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    if config.metrics.separate:
        app.cleanup_ctx.append(metrics_listener(lambda: otpd))
    return app


class HealthServer(HttpServer):
    """:class:`~otpd.api.HttpServer` serving :func:`create_health_app` of an open daemon."""

    def __init__(
        self,
        otpd: Otpd,
        host: str | None = None,
        port: int | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(otpd, host, port, reuse_port=reuse_port)
        self._otpd = otpd

    def _app(self) -> web.Application:
        return create_health_app(self._otpd)
