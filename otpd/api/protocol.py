"""The hardened HTTP protocol ``otpd serve`` and :class:`~otpd.api.HttpServer` run on.

aiohttp's own ``RequestHandler`` waits for a request head as long as the keep-alive
timeout (an hour under a plain ``AppRunner``), never limits how many connections it holds,
and answers its parser's errors with ``text/plain`` pages logged as error tracebacks. Here,
through the seams aiohttp has for it (``AppRunner._make_server``, ``web.Server.__call__``
and the handler's ``handle_error``, ``finish_response``, ``log_exception`` and asyncio
protocol methods; ``_request_count`` tells when a head was parsed):

* a request head must arrive within ``server.header_timeout_seconds`` (else a 408);
* lingering over an unread body after the answer is bounded by the body timeout, and a
  connection whose body timed out or failed to decode is closed at once;
* at most ``server.max_connections`` connections are open; at the cap a new one takes the
  place of the connection idle (kept alive, between requests) for longest, and when none
  is idle it gets a 503 and is closed before anything is read from it;
* the parser's errors (bad request line, headers, chunked framing, too-long lines) answer
  the uniform JSON error, are logged at info without a traceback, and a client that
  disconnects is never logged as an error.

``web.run_app(create_app(config))`` keeps aiohttp's default protocol; run
:class:`OtpdAppRunner` with a ``TCPSite`` (as :class:`~otpd.api.HttpServer` does) for this one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from otpd.api.middleware import CLOSE_CONNECTION, error_response
from otpd.config import ServerConfig

__all__ = ["OtpdAppRunner", "OtpdRequestHandler", "OtpdServer", "is_client_error"]

log = structlog.get_logger("otpd.api")

# aiohttp lingers up to 10 s reading an unread body so the client can see the answer.
MAX_LINGER_SECONDS = 10.0
# How often, at most, reaching the connection cap is logged (with the count refused since).
CAP_LOG_INTERVAL_SECONDS = 60.0
MAX_LOGGED_REASON = 200

_CLIENT_ERRORS = (HttpProcessingError, RequestPayloadError, ConnectionError)


def is_client_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the client's doing (a malformed message or payload, a dropped
    connection) rather than a fault of otpd."""
    return isinstance(exc, _CLIENT_ERRORS)


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` response in the uniform error shape, for answers
    written straight to the transport when no request exists to answer."""
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


HEAD_TIMEOUT_RESPONSE = _raw_error(
    408, "Request Timeout", "request_timeout", "the request head did not arrive in time"
)
OVER_CAPACITY_RESPONSE = _raw_error(
    503, "Service Unavailable", "unavailable", "too many connections; retry later"
)


def _parser_error(exc: BaseException | None) -> tuple[int, str, str]:
    """Status, code and message for an error of aiohttp's request parser."""
    if isinstance(exc, LineTooLong):
        # the C parser hands the request target over as a bytearray, header lines as bytes
        if exc.args and isinstance(exc.args[0], bytearray):
            return 414, "uri_too_long", "the request target is too long"
        return 431, "headers_too_large", "a request header is too long"
    if isinstance(exc, HttpProcessingError) and "too many headers" in exc.message.lower():
        return 431, "headers_too_large", "too many request headers"
    if isinstance(exc, BadHttpMethod):
        return 400, "bad_request", "the request method is not valid"
    return 400, "bad_request", "the request is not valid HTTP"


class OtpdRequestHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol with a request-head deadline, a connection cap and uniform
    JSON answers to the parser's errors. Created by :class:`OtpdServer`."""

    def __init__(self, manager: OtpdServer, *, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._config = config
        self._otpd_server = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads = 0  # request heads parsed on this connection
        self._answered = 0  # responses finished on it
        self._admitted = False
        self._refused = False

    # ---------------------------------------------------------------- connection lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._otpd_server.admit():
            self._refused = True
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(OVER_CAPACITY_RESPONSE)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        if self._refused:
            return
        self._otpd_server.busy(self)
        if self._admitted:
            self._admitted = False
            self._otpd_server.release()
        task = self._task_handler
        between_requests = self._current_request is None
        super().connection_lost(exc)
        if task is not None and between_requests and not task.done():
            # No request is being handled: the task waits for the next head or lingers
            # over the unread body of an answered one. aiohttp drops its reference here
            # and never ends a lingering read whose connection is gone, so the task would
            # be destroyed while pending; end it now. (A handler that is still running is
            # left to finish: its writes must complete.)
            task.cancel()

    def evict(self) -> None:
        """Close this idle kept-alive connection to make room for a new one: its place is
        given up now, the socket closes as soon as the loop gets to it."""
        if self._admitted:
            self._admitted = False
            self._otpd_server.release()
        self._disarm_head_timer()
        self.force_close()
        transport = self.transport
        if transport is not None:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if data:
            self._otpd_server.busy(self)
        if data and self._head_timer is None and self._heads == self._answered:
            self._arm_head_timer()  # the first byte of the next request on a kept-alive line
        before = self._request_count
        super().data_received(data)
        parsed = self._request_count - before
        if parsed:
            self._heads += parsed
            self._disarm_head_timer()

    # ---------------------------------------------------------------- request-head deadline

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(
                self._config.header_timeout_seconds, self._head_timed_out
            )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.info("api.header_timeout", remote=_peer(transport))
        transport.write(HEAD_TIMEOUT_RESPONSE)
        self.force_close()

    # ---------------------------------------------------------------- answers and errors

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            # No lingering over a body that timed out or cannot be decoded: it only
            # holds the connection (and would fail again on every read).
            if request.get(CLOSE_CONNECTION) or request.content.exception() is not None:
                self.force_close()
            elif self._heads == self._answered and self._head_timer is None:
                # answered, nothing of a next request yet: an idle kept-alive connection
                self._otpd_server.idle(self)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The uniform JSON error for whatever reached aiohttp outside the middleware:
        mostly the parser's errors (status 400), which are the client's, logged at info."""
        if request.writer.output_size > 0:
            # part of an answer is out: the connection is broken, as aiohttp handles it
            raise ConnectionError("a response was partly sent; cannot send an error")
        if isinstance(exc, ConnectionError):
            # the client is gone: nobody reads this answer and nothing is wrong
            status, code, text = 400, "bad_request", "the client closed the connection"
        elif status == 400 or is_client_error(exc):
            status, code, text = _parser_error(exc)
            log.info(
                "api.bad_request",
                status=status,
                code=code,
                reason=_reason(exc, message),
                remote=request.remote,
            )
        elif status == 504:
            code, text = "timeout", "the request timed out"
            log.warning("api.request_timeout", remote=request.remote)
        else:
            code, text = "internal_error", "internal error"
            log.error("api.unhandled_error", status=status, exc_info=exc)
        response = error_response(status, code, text)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error log (e.g. a body that fails while lingering after the
        answer): the client's mistakes at info without a traceback, the rest as before."""
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException) and is_client_error(exc):
            if not isinstance(exc, ConnectionError):
                log.info("api.client_error", error=type(exc).__name__, reason=_reason(exc))
            return
        super().log_exception(*args, **kw)


def _peer(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None if peer is None else str(peer)


def _reason(exc: BaseException | None, message: str | None = None) -> str:
    text = exc.message if isinstance(exc, HttpProcessingError) else (message or str(exc or ""))
    text = " ".join(str(text).split())  # the parser quotes the offending bytes over lines
    return text[:MAX_LOGGED_REASON]


class OtpdServer(web.Server):
    """``web.Server`` that builds :class:`OtpdRequestHandler` protocols and counts their
    connections against ``server.max_connections``."""

    def __init__(
        self,
        handler: Any,
        *,
        config: ServerConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, loop=loop, **kwargs)
        self.config = config
        self.open_connections = 0
        self.refused_connections = 0
        self._handler_loop = loop or asyncio.get_running_loop()
        self._handler_kwargs = {
            k: v for k, v in kwargs.items() if k not in ("request_factory", "handler_cancellation")
        }
        self._refused_since_log = 0
        self._cap_logged_at: float | None = None
        # kept-alive connections waiting for their next request, longest idle first
        self._idle: dict[OtpdRequestHandler, None] = {}

    def __call__(self) -> RequestHandler:
        return OtpdRequestHandler(
            self, loop=self._handler_loop, config=self.config, **self._handler_kwargs
        )

    def idle(self, handler: OtpdRequestHandler) -> None:
        self._idle[handler] = None

    def busy(self, handler: OtpdRequestHandler) -> None:
        self._idle.pop(handler, None)

    def admit(self) -> bool:
        """Count a new connection in. At the cap, the connection idle for longest makes
        room (a client holding idle keep-alive connections must not lock others out);
        with none idle, the new one is refused."""
        if self.open_connections >= self.config.max_connections and self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            oldest.evict()
        if self.open_connections < self.config.max_connections:
            self.open_connections += 1
            return True
        self.refused_connections += 1
        self._refused_since_log += 1
        now = self._handler_loop.time()
        if self._cap_logged_at is None or now - self._cap_logged_at >= CAP_LOG_INTERVAL_SECONDS:
            log.warning(
                "api.connection_limit_reached",
                max_connections=self.config.max_connections,
                refused=self._refused_since_log,
            )
            self._cap_logged_at = now
            self._refused_since_log = 0
        return False

    def release(self) -> None:
        self.open_connections -= 1


class OtpdAppRunner(web.AppRunner):
    """``AppRunner`` serving ``app`` on :class:`OtpdServer` with the limits of ``config``
    (a ``[server]`` section). Use it with ``web.TCPSite`` like a plain ``AppRunner``."""

    def __init__(self, app: web.Application, config: ServerConfig, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", config.keepalive_timeout_seconds)
        kwargs.setdefault("lingering_time", min(MAX_LINGER_SECONDS, config.body_timeout_seconds))
        super().__init__(app, **kwargs)
        self.server_config = config

    async def _make_server(self) -> web.Server:
        # AppRunner starts the app and builds a plain web.Server; keep its handler, request
        # factory and protocol arguments and serve them on the hardened server instead.
        plain = await super()._make_server()
        return OtpdServer(
            plain.request_handler,
            config=self.server_config,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **plain._kwargs,
        )
