"""``/webhooks/<provider>``: delivery reports, verified by the provider's signature (no API
key), applied to the tasks they name. Neither the body nor a recipient is ever logged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from otpd.api.middleware import public
from otpd.api.routes import OTPD, json_response, read_raw
from otpd.services.deliveries import REPORTING_PROVIDERS
from otpd.webhooks.events import Verifier

__all__ = ["webhook_routes"]

webhook_routes = web.RouteTableDef()


def _route(provider: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    @public
    async def handler(request: web.Request) -> web.Response:
        raw = await read_raw(request)
        daemon = request.app[OTPD]
        verifier: Verifier = getattr(daemon.webhooks, provider)
        events = await verifier.events(request.headers, raw)
        await daemon.deliveries.apply(events)
        return json_response({"accepted": len(events)})

    handler.__name__ = handler.__qualname__ = f"{provider}_webhook"
    return handler


# a route each, verified by the provider's verifier (otpd.webhooks.registry.Webhooks)
for _provider in sorted(REPORTING_PROVIDERS):
    webhook_routes.post(f"/webhooks/{_provider}")(_route(_provider))
