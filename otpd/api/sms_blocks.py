"""``/v1/sms/blocks``: the number ranges the SMS guard blocked for low conversion, and
lifting one, behind the API key like the rest of v1. A range is its prefix: ``+`` and
``sms.prefix_digits`` digits."""

from __future__ import annotations

from aiohttp import web

from otpd.api.routes import OTPD, json_response
from otpd.clock import rfc3339
from otpd.errors import ValidationError

__all__ = ["sms_block_routes"]

sms_block_routes = web.RouteTableDef()


def _no_query(request: web.Request) -> None:
    if request.query:
        unknown = sorted(request.query)
        raise ValidationError(
            "unknown query parameter", fields={k[:64]: "unknown parameter" for k in unknown[:8]}
        )


@sms_block_routes.get("/v1/sms/blocks")
async def list_sms_blocks(request: web.Request) -> web.Response:
    _no_query(request)
    shown = await request.app[OTPD].sms_guard.blocks()
    return json_response(
        {
            "blocks": [
                {
                    "prefix": s.prefix or None,
                    "reason": s.block.reason,
                    "blocked_at": rfc3339(s.block.blocked_at),
                    "expires_at": rfc3339(s.block.expires_at),
                    "sent": s.block.sent,
                    "verified": s.block.verified,
                }
                for s in shown
            ]
        }
    )


@sms_block_routes.delete("/v1/sms/blocks/{prefix}")
async def lift_sms_block(request: web.Request) -> web.Response:
    _no_query(request)
    await request.app[OTPD].sms_guard.lift(request.match_info["prefix"])
    return web.Response(status=204)
