"""HTTP handlers: parse, call a service, render JSON. Nothing else happens here."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from otpd.api.metrics import metrics_response
from otpd.api.middleware import CLIENT, CLOSE_CONNECTION, public
from otpd.api.schemas import IssueOtpBody, SendMessageBody, VerifyOtpBody, as_kwargs, parse_body
from otpd.app import Otpd
from otpd.clock import rfc3339
from otpd.errors import ValidationError
from otpd.services.tasks import MAX_DEAD_LETTERS

__all__ = ["OTPD", "json_response", "read_body", "read_raw", "routes"]

OTPD = web.AppKey("otpd", Otpd)
T = TypeVar("T")

routes = web.RouteTableDef()


async def read_body(request: web.Request, cls: type[T]) -> T:
    """The JSON body as ``cls``, read by :func:`read_raw`."""
    return parse_body(cls, await read_raw(request))


async def read_raw(request: web.Request) -> bytes:
    """The raw body: read within ``server.body_timeout_seconds`` (else a 408 that closes
    the connection), at most ``server.max_body_bytes`` (else a 422)."""
    server = request.app[OTPD].config.server
    try:
        if request.content.is_eof():  # the whole body is in already: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(server.body_timeout_seconds):
                raw = await request.read()
    except TimeoutError:
        request[CLOSE_CONNECTION] = True
        raise web.HTTPRequestTimeout() from None
    except web.HTTPRequestEntityTooLarge:
        limit = server.max_body_bytes
        raise ValidationError(
            f"the body exceeds {limit} bytes", details={"body": f"larger than {limit} bytes"}
        ) from None
    except (RequestPayloadError, HttpProcessingError):
        # e.g. a Content-Encoding that does not decode
        raise ValidationError(
            "the body could not be read", details={"body": "undecodable payload"}
        ) from None
    return raw


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


@routes.post("/v1/otp")
async def issue_otp(request: web.Request) -> web.Response:
    body = await read_body(request, IssueOtpBody)
    issued = await request.app[OTPD].otp.issue(**as_kwargs(body))
    return json_response(
        {
            "otp_id": issued.otp_id,
            "expires_at": rfc3339(issued.expires_at),
            "deliveries": [
                {"channel": d.channel.value, "task_id": d.task_id} for d in issued.deliveries
            ],
        },
        status=202,
    )


@routes.get("/v1/otp/{otp_id}")
async def otp_status(request: web.Request) -> web.Response:
    status = await request.app[OTPD].otp.status(request.match_info["otp_id"])
    return json_response(status.to_public())


@routes.post("/v1/otp/verify")
async def verify_otp(request: web.Request) -> web.Response:
    body = await read_body(request, VerifyOtpBody)
    result = await request.app[OTPD].otp.verify(**as_kwargs(body))
    if result.verified:
        return json_response({"verified": True})
    return json_response(
        {"verified": False, "reason": str(result.reason), "attempts_left": result.attempts_left}
    )


@routes.post("/v1/messages")
async def send_message(request: web.Request) -> web.Response:
    body = await read_body(request, SendMessageBody)
    accepted = await request.app[OTPD].messages.send(
        **dataclasses.asdict(body), client=request.get(CLIENT, "default")
    )
    response = json_response({"task_id": accepted.task_id}, status=202)
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@routes.get("/v1/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    record = await request.app[OTPD].tasks.get(request.match_info["task_id"])
    return json_response(record.to_public())


@routes.get("/v1/dead-letters")
async def dead_letters(request: web.Request) -> web.Response:
    query = request.query
    unknown = sorted(set(query) - {"limit", "channel"})
    if unknown:
        raise ValidationError(
            "unknown query parameter", fields={k[:64]: "unknown parameter" for k in unknown[:8]}
        )
    raw_limit = query.get("limit", "100")
    if not raw_limit.isascii() or not raw_limit.isdigit() or len(raw_limit) > 6:
        raise ValidationError.field("limit", f"must be an integer 1 to {MAX_DEAD_LETTERS}")
    letters = await request.app[OTPD].tasks.dead_letters(
        limit=int(raw_limit), channel=query.get("channel")
    )
    return json_response({"dead_letters": [d.to_public() for d in letters]})


@routes.post("/v1/dead-letters/{task_id}/replay")
async def replay_dead_letter(request: web.Request) -> web.Response:
    record = await request.app[OTPD].tasks.replay(request.match_info["task_id"])
    return json_response({"task_id": record.task_id}, status=202)


@routes.get("/v1/health/messaging")
async def messaging_health(request: web.Request) -> web.Response:
    providers = await request.app[OTPD].messaging_health()
    return json_response(
        {
            "providers": [
                {
                    "name": p.name,
                    "channel": p.channel.value,
                    "state": p.state,
                    "consecutive_failures": p.consecutive_failures,
                    "last_error": p.last_error,
                    "last_success_at": rfc3339(p.last_success_at) if p.last_success_at else None,
                    "details": p.details,
                }
                for p in providers
            ]
        }
    )


@routes.get("/healthz")
@public
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
@public
async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[OTPD].readiness()
    ready = all(c["ok"] for c in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    store = checks.get("store", {})
    if "degraded" in store:  # store.fallback is on: serving from it is ready, and says so
        body["degraded"] = store["degraded"]
        if store["degraded"]:
            body["reason"] = store["reason"]
    return json_response(body, 200 if ready else 503)


@routes.get("/metrics")
@public
async def metrics(request: web.Request) -> web.Response:
    return await metrics_response(request, request.app[OTPD])
