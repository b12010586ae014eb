"""One place that turns every failure into the uniform JSON error, API-key auth, and the
request metrics."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from otpd.config import ApiKey
from otpd.errors import OtpdError, RateLimitedError, UnauthorizedError
from otpd.metrics import UNMATCHED_ROUTE, Metrics

__all__ = [
    "CLIENT",
    "CLOSE_CONNECTION",
    "auth_middleware",
    "error_middleware",
    "error_response",
    "metrics_middleware",
    "public",
    "route_label",
]

log = structlog.get_logger("otpd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT = web.RequestKey("client", str)
"""The name of the API key that authenticated the request."""

CLOSE_CONNECTION = web.RequestKey("otpd_close_connection", bool)
"""Set on a request whose body timed out: the hardened protocol closes the connection
right after the answer instead of lingering over the rest of the body."""

H = TypeVar("H", bound=Handler)


def public(handler: H) -> H:
    """Mark a handler as served without an API key (health, metrics, the hosted page).
    Every other route needs one, wherever the application is mounted."""
    handler.otpd_public = True  # type: ignore[attr-defined]
    return handler


_V1 = re.compile(r"(?:^|/)v1(?:/|$)")


def _needs_key(request: web.Request) -> bool:
    match = request.match_info
    if match.http_exception is not None:
        # no such route (404, 405): under v1 the key comes first, as it always has, so an
        # unauthenticated caller learns nothing of the API; elsewhere it is a plain 404
        return _V1.search(request.path) is not None
    return not getattr(match.handler, "otpd_public", False)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "validation_error",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except OtpdError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        if isinstance(exc, RateLimitedError):
            response.headers["Retry-After"] = str(exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status = 422 if exc.status == 413 else exc.status
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(status, code, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except ConnectionResetError as exc:  # aiohttp's ClientConnectionResetError included
        if not _client_gone(request):
            log.exception("api.unhandled_error", method=request.method, path=request.path)
            response = error_response(500, "internal_error", "internal error")
        else:  # the client hung up mid-request: nobody reads the answer, nothing failed
            log.debug("api.client_disconnected", method=request.method, error=str(exc))
            response = error_response(400, "bad_request", "the client closed the connection")
    except Exception:
        log.exception("api.unhandled_error", method=request.method, path=request.path)
        response = error_response(500, "internal_error", "internal error")
    log.debug(
        "api.request",
        method=request.method,
        path=request.path,
        status=response.status,
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(request: web.Request) -> str:
    """The matched route's pattern (``/v1/tasks/{task_id}``), never the raw path: a path
    that matched no route is :data:`~otpd.metrics.UNMATCHED_ROUTE`, so clients cannot
    add series."""
    match = request.match_info
    if match.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical


def metrics_middleware(metrics_of: Callable[[web.Request], Metrics]) -> Middleware:
    """Count every answer by route pattern, method and status, and time it. Outermost, so
    it sees the status the client gets."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500  # unless an answer or an HTTP exception says otherwise
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # a redirect, or an error past error_middleware
            status = exc.status
            raise
        else:
            status = response.status
            return response
        finally:
            method = request.method if request.method in _METHODS else "OTHER"
            metrics_of(request).observe_request(
                route_label(request), method, status, time.perf_counter() - started
            )

    return middleware


def auth_middleware(
    keys: Sequence[ApiKey],
    on_refused: Callable[[web.Request, str], Awaitable[None]] | None = None,
) -> Middleware:
    """Require ``Authorization: Bearer <key>`` on every route not marked :func:`public`;
    compare digests in constant time. ``on_refused(request, reason)`` is awaited before a
    refusal (``missing_key``, ``invalid_key``): the audit trail's record of it."""
    digests = [(k.name, k.sha256.encode()) for k in keys]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not digests or not _needs_key(request):
            return await handler(request)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            if on_refused is not None:
                await on_refused(request, "missing_key")
            raise UnauthorizedError("missing bearer API key")
        digest = hashlib.sha256(key.strip().encode()).hexdigest().encode()
        client = None
        for name, expected in digests:  # no early exit: every key is compared
            if hmac.compare_digest(digest, expected):
                client = name
        if client is None:
            if on_refused is not None:
                await on_refused(request, "invalid_key")
            raise UnauthorizedError("invalid API key")
        request[CLIENT] = client
        structlog.contextvars.bind_contextvars(client=client)
        try:
            return await handler(request)
        finally:
            structlog.contextvars.unbind_contextvars("client")

    return middleware
