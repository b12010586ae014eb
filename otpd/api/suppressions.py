"""``/v1/suppressions``: read, add and lift entries of the suppression list, behind the API
key like the rest of v1. The address is a query parameter (GET, DELETE) or the body (POST);
it is never echoed back: an entry shows since when and why, not whom."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from otpd import validation as v
from otpd.api.routes import OTPD, json_response, read_body
from otpd.clock import rfc3339
from otpd.errors import ValidationError
from otpd.services.suppressions import REASON_MAX

__all__ = ["SuppressionBody", "suppression_routes"]

suppression_routes = web.RouteTableDef()


@dataclass(frozen=True, slots=True)
class SuppressionBody:
    address: str = field(metadata={"max_len": v.MAX_EMAIL})
    reason: str = field(default="manual", metadata={"max_len": REASON_MAX})


def _address(request: web.Request) -> str:
    query = request.query
    unknown = sorted(set(query) - {"address"})
    if unknown:
        raise ValidationError(
            "unknown query parameter", fields={k[:64]: "unknown parameter" for k in unknown[:8]}
        )
    given = query.getall("address", [])
    if len(given) != 1:
        raise ValidationError.field("address", "required once")
    if len(given[0]) > v.MAX_EMAIL:
        raise ValidationError.field("address", f"at most {v.MAX_EMAIL} characters")
    return given[0]


@suppression_routes.get("/v1/suppressions")
async def get_suppression(request: web.Request) -> web.Response:
    found = await request.app[OTPD].suppressions.get(_address(request))
    if found is None:
        return json_response({"suppressed": False, "reason": None, "since": None})
    return json_response(
        {"suppressed": True, "reason": found.reason, "since": rfc3339(found.since)}
    )


@suppression_routes.post("/v1/suppressions")
async def add_suppression(request: web.Request) -> web.Response:
    body = await read_body(request, SuppressionBody)
    added = await request.app[OTPD].suppressions.add(body.address, body.reason, source="api")
    return json_response(
        {"suppressed": True, "reason": added.reason, "since": rfc3339(added.since)}, status=201
    )


@suppression_routes.delete("/v1/suppressions")
async def delete_suppression(request: web.Request) -> web.Response:
    # 204 whether or not there was one: afterwards the address is not suppressed
    await request.app[OTPD].suppressions.remove(_address(request))
    return web.Response(status=204)
