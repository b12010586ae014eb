"""HTTP handlers for email verification and password reset links (JSON, behind the API
key like the rest of v1). The page people open from a mailed link is :mod:`otpd.api.hosted`.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from otpd.api.routes import OTPD, json_response, read_body
from otpd.api.schemas import LinkRequestBody, RemindersBody, TokenBody
from otpd.clock import rfc3339
from otpd.services.links import LinkIssued, ReminderUser

__all__ = ["link_routes"]

link_routes = web.RouteTableDef()


def _issued(issued: LinkIssued) -> web.Response:
    return json_response({"task_id": issued.task_id, "expires_at": rfc3339(issued.expires_at)}, 202)


# ---------------------------------------------------------------------- email verification


@link_routes.post("/v1/email-verifications")
async def request_verification(request: web.Request) -> web.Response:
    body = await read_body(request, LinkRequestBody)
    issued = await request.app[OTPD].links.request_verification(**dataclasses.asdict(body))
    return _issued(issued)


@link_routes.post("/v1/email-verifications/confirm")
async def confirm_verification(request: web.Request) -> web.Response:
    body = await read_body(request, TokenBody)
    owner = await request.app[OTPD].links.confirm_verification(body.token)
    return json_response({"user_id": owner.user_id, "email": owner.email})


@link_routes.post("/v1/email-verifications/reminders")
async def send_reminders(request: web.Request) -> web.Response:
    body = await read_body(request, RemindersBody)
    result = await request.app[OTPD].reminders.send(
        [ReminderUser(u.user_id, u.email, u.name) for u in body.users]
    )
    skipped = [{"user_id": s.user_id, "reason": s.reason} for s in result.skipped]
    return json_response({"queued": result.queued, "skipped": skipped}, 202)


# ---------------------------------------------------------------------- password reset


@link_routes.post("/v1/password-resets")
async def request_password_reset(request: web.Request) -> web.Response:
    body = await read_body(request, LinkRequestBody)
    issued = await request.app[OTPD].links.request_password_reset(**dataclasses.asdict(body))
    return _issued(issued)


@link_routes.post("/v1/password-resets/check")
async def check_password_reset(request: web.Request) -> web.Response:
    body = await read_body(request, TokenBody)
    owner = await request.app[OTPD].links.check_password_reset(body.token)
    return json_response(
        {"user_id": owner.user_id, "email": owner.email, "expires_at": rfc3339(owner.expires_at)}
    )


@link_routes.post("/v1/password-resets/confirm")
async def confirm_password_reset(request: web.Request) -> web.Response:
    body = await read_body(request, TokenBody)
    owner = await request.app[OTPD].links.confirm_password_reset(body.token)
    return json_response({"user_id": owner.user_id, "email": owner.email})
