"""``/webhooks/<provider>``: delivery reports, verified by the provider's signature (no API
key), applied to the tasks they name. Neither the body nor a recipient is ever logged."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from otpd.api.middleware import public
from otpd.api.routes import OTPD, json_response, read_raw
from otpd.webhooks.events import DeliveryEvent

__all__ = ["webhook_routes"]

webhook_routes = web.RouteTableDef()


async def _apply(request: web.Request, events: Sequence[DeliveryEvent]) -> web.Response:
    await request.app[OTPD].deliveries.apply(events)
    return json_response({"accepted": len(events)})


@webhook_routes.post("/webhooks/twilio")
@public
async def twilio_webhook(request: web.Request) -> web.Response:
    raw = await read_raw(request)
    return await _apply(
        request, await request.app[OTPD].webhooks.twilio.events(request.headers, raw)
    )


@webhook_routes.post("/webhooks/mailgun")
@public
async def mailgun_webhook(request: web.Request) -> web.Response:
    raw = await read_raw(request)
    return await _apply(request, await request.app[OTPD].webhooks.mailgun.events(raw))


@webhook_routes.post("/webhooks/sendgrid")
@public
async def sendgrid_webhook(request: web.Request) -> web.Response:
    raw = await read_raw(request)
    events = await request.app[OTPD].webhooks.sendgrid.events(request.headers, raw)
    return await _apply(request, events)


@webhook_routes.post("/webhooks/vonage")
@public
async def vonage_webhook(request: web.Request) -> web.Response:
    raw = await read_raw(request)
    events = await request.app[OTPD].webhooks.vonage.events(request.headers, raw)
    return await _apply(request, events)


@webhook_routes.post("/webhooks/ses")
@public
async def ses_webhook(request: web.Request) -> web.Response:
    raw = await read_raw(request)
    events = await request.app[OTPD].webhooks.ses.events(request.headers, raw)
    return await _apply(request, events)
