"""``GET /v1/audit``: the audit trail, newest first, behind the API key like the rest of v1;
and the record of every request the API key check refused."""

from __future__ import annotations

from aiohttp import web

from otpd.api.routes import OTPD, json_response
from otpd.errors import ValidationError
from otpd.store.base import AUDIT_MAX_LIMIT

__all__ = ["audit_routes", "record_unauthorized"]

audit_routes = web.RouteTableDef()

_PARAMS = frozenset({"user_id", "event", "since", "until", "limit", "cursor"})
_MAX_PATH = 200


@audit_routes.get("/v1/audit")
async def audit_events(request: web.Request) -> web.Response:
    query = request.query
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise ValidationError(
            "unknown query parameter", fields={k[:64]: "unknown parameter" for k in unknown[:8]}
        )
    repeated = sorted(k for k in _PARAMS if len(query.getall(k, [])) > 1)
    if repeated:
        raise ValidationError(
            "a query parameter is repeated", fields={k: "given more than once" for k in repeated}
        )
    raw_limit = query.get("limit", "100")
    if not raw_limit.isascii() or not raw_limit.isdigit() or len(raw_limit) > 6:
        raise ValidationError.field("limit", f"must be an integer 1 to {AUDIT_MAX_LIMIT}")
    events, next_cursor = await request.app[OTPD].audit.events(
        user_id=query.get("user_id"),
        event=query.get("event"),
        since=query.get("since"),
        until=query.get("until"),
        limit=int(raw_limit),
        cursor=query.get("cursor"),
    )
    return json_response({"events": events, "next_cursor": next_cursor})


async def record_unauthorized(request: web.Request, reason: str) -> None:
    """The audit record of a request refused for its API key (``reason``: ``missing_key``
    or ``invalid_key``); the caller is the API client, so its address is the peer's."""
    daemon = request.app.get(OTPD)
    if daemon is None:  # a daemon still opening: nothing to record into yet
        return
    await daemon.audit.record(
        "api_unauthorized",
        reason=reason,
        client_ip=request.remote,
        user_agent=request.headers.get("User-Agent"),
        method=request.method,
        path=request.path[:_MAX_PATH],
    )
