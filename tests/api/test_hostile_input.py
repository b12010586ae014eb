"""Regression tests for what the hostile-input probe and the fuzz run found: each request
answered in its route's own shape (the uniform JSON error, or the hosted page's html and
303), never a 5xx, never an error line in the log."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from otpd.api import HOSTED_VERIFY_PATH, HttpServer
from otpd.api.schemas import MAX_DEPTH, nesting_exceeds
from tests.api.helpers import assert_error
from tests.api.rawhttp import (
    AUTH,
    FAILURE_URL,
    Logs,
    RawResponse,
    captured_logs,
    exchange,
    request,
    served_config,
    serving,
)
from tests.conftest import ConfigFactory

JSON_ROUTES = [
    "/v1/otp",
    "/v1/otp/verify",
    "/v1/messages",
    "/v1/email-verifications",
    "/v1/email-verifications/confirm",
    "/v1/email-verifications/reminders",
    "/v1/password-resets",
    "/v1/password-resets/check",
    "/v1/password-resets/confirm",
]


@pytest.fixture
async def server(make_config: ConfigFactory) -> AsyncIterator[HttpServer]:
    async with serving(served_config(make_config, body_timeout_seconds=1.0)) as running:
        yield running


@pytest.fixture
def logs() -> Iterator[Logs]:
    with captured_logs() as captured:
        yield captured
    assert not captured.errors(), captured.errors()


def json_error(answer: RawResponse, status: int, code: str) -> dict[str, object]:
    assert answer.status == status, answer
    assert answer.content_type == "application/json", answer
    return assert_error(answer.json(), code)


def post_json(path: str, body: bytes, **headers: str) -> bytes:
    return request(
        "POST",
        path,
        body,
        {"Authorization": AUTH, "Content-Type": "application/json", **headers},
    )


# ---------------------------------------------------------------- deep JSON


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return b'{"user_id": "u", "x": ' + opener * depth + b"1" + closer * depth + b"}"


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("depth", [33, 400, 990, 5000])
async def test_json_nested_deeper_than_32_levels_is_a_422_on_every_json_route(
    server: HttpServer, logs: Logs, path: str, depth: int
) -> None:
    """Found: 400 to 990 levels passed json.loads, then the recursive checks raised
    RecursionError: a 500 and an error traceback."""
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        answer = await exchange(server.port, post_json(path, nested(depth, opener, closer)))
        details = json_error(answer, 422, "validation_error")
        assert details == {"body": f"nested deeper than {MAX_DEPTH} levels"}


async def test_json_nested_32_levels_is_parsed_and_judged_on_its_fields(
    server: HttpServer, logs: Logs
) -> None:
    answer = await exchange(server.port, post_json("/v1/otp", nested(MAX_DEPTH - 1)))
    details = json_error(answer, 422, "validation_error")
    assert details["fields"] == {"x": "unknown field", "channel": "required"}


@pytest.mark.parametrize(
    ("raw", "deep"),
    [
        (b"[" * 33 + b"]" * 33, True),
        (b"[" * 32 + b"]" * 32, False),
        (b"[{" * 17 + b"}]" * 17, True),
        (b"[{" * 16 + b"}]" * 16, False),
        (b"[[]," * 40 + b"]" * 40, True),  # depth grows beside siblings
        (b"[]" * 5000, False),  # many, but flat
        (b'["' + b"[" * 100 + b'"]', False),  # brackets inside a string do not count
        (b'["\\"' + b"[" * 100 + b'"]', False),  # nor after an escaped quote
        (b'["\\\\"' + b"," * 40 + b"]", False),
        (b'"unterminated ' + b"[" * 40, False),
        (b'{"a": "x"}' + b"{" * 40, True),  # unbalanced: the parser refuses it anyway
    ],
)
def test_nesting_scan_counts_brackets_outside_strings(raw: bytes, deep: bool) -> None:
    assert nesting_exceeds(raw) is deep


def test_nesting_scan_is_linear_on_hostile_bodies() -> None:
    """An unterminated string of escaped quotes made a naive string regex quadratic."""
    bodies = [
        b"[" * 40 + b'"\\"' * 30000,
        b"[" * 30000 + b"]" * 30000,
        b"[[]," * 16000,
        (b"[" * 31 + b"]" * 31) * 1000,
    ]
    started = time.perf_counter()
    for body in bodies:
        nesting_exceeds(body)
    assert time.perf_counter() - started < 0.5


async def test_unknown_fields_are_not_all_echoed_back(server: HttpServer, logs: Logs) -> None:
    fields = ", ".join(f'"{"k" * 100}{i}": 1' for i in range(500))
    answer = await exchange(
        server.port, post_json("/v1/otp", ('{"user_id": "u", ' + fields + "}").encode())
    )
    details = json_error(answer, 422, "validation_error")
    reported = details["fields"]
    assert isinstance(reported, dict)
    assert len(reported) <= 22
    assert all(len(name) <= 67 for name in reported)
    assert reported["..."] == "480 more unknown fields"


# ---------------------------------------------------------------- the hosted form


def form(body: bytes, content_type: str, **headers: str) -> bytes:
    return request("POST", HOSTED_VERIFY_PATH, body, {"Content-Type": content_type, **headers})


def assert_broken_link_page(answer: RawResponse) -> None:
    assert answer.status == 400, answer
    assert answer.content_type == "text/html", answer
    assert b"This link is not valid" in answer.body
    assert FAILURE_URL.encode() in answer.body
    assert "default-src 'none'" in answer.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("body", "content_type", "headers"),
    [
        # found by the probe: a 500 each
        (b"--x\r\nbad", 'multipart/form-data; boundary="', {}),
        (b"hello", "multipart/form-data", {}),
        (b"token=\xff\xfe\xfd", "application/x-www-form-urlencoded", {}),
        (b"hello", "application/x-www-form-urlencoded", {"Content-Encoding": "gzip"}),
        # found by the fuzz run: an unknown charset raised LookupError
        (b"token=abc", "application/x-www-form-urlencoded; charset=nope", {}),
        (b"token=" + b"a" * 70000, "application/x-www-form-urlencoded", {}),
        (b"token=" + b"&a=1" * 3000, "application/x-www-form-urlencoded", {}),
        (b'{"token": "x"}', "application/json", {}),
        (b"token=x", "text/plain", {}),
    ],
)
async def test_a_body_that_is_not_the_form_gets_the_broken_link_page(
    server: HttpServer, logs: Logs, body: bytes, content_type: str, headers: dict[str, str]
) -> None:
    answer = await exchange(server.port, form(body, content_type, **headers))
    assert_broken_link_page(answer)


async def test_a_gzipped_form_is_read_like_a_plain_one(server: HttpServer, logs: Logs) -> None:
    body = gzip.compress(b"token=not-a-token")
    answer = await exchange(
        server.port,
        form(body, "application/x-www-form-urlencoded", **{"Content-Encoding": "gzip"}),
    )
    assert (answer.status, answer.headers["location"]) == (303, FAILURE_URL)


async def test_a_form_that_never_finishes_gets_the_page_once_the_body_deadline_passes(
    server: HttpServer, logs: Logs
) -> None:
    head = request(
        "POST",
        HOSTED_VERIFY_PATH,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "100"},
    )
    started = time.monotonic()
    answer = await exchange(server.port, head + b"token=abc")
    assert time.monotonic() - started < 3
    assert_broken_link_page(answer)


# ---------------------------------------------------------------- malformed HTTP

MALFORMED = {
    "request line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "method": (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "tls handshake": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad_request"),
    "version": (b"GET /healthz HTTP/9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "header name": (b"GET /healthz HTTP/1.1\r\nBad Header: a\r\n\r\n", 400, "bad_request"),
    "nul in header": (b"GET /healthz HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400, "bad_request"),
    "chunk size": (
        b"POST /v1/otp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n",
        400,
        "bad_request",
    ),
    "length and chunked": (
        b"POST /v1/otp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    "negative length": (
        b"POST /v1/otp HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        400,
        "bad_request",
    ),
    "long target": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
    "long header": (
        b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "many headers": (
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
        431,
        "headers_too_large",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_http_gets_the_uniform_json_error_and_an_info_line(
    server: HttpServer, logs: Logs, name: str
) -> None:
    """Found: aiohttp answered these in text/plain and logged each at error level with a
    traceback ("Error handling request"), so anyone could flood the log."""
    data, status, code = MALFORMED[name]
    answer = await exchange(server.port, data)
    json_error(answer, status, code)
    lines = [e for e in logs.structlog_lines if e["event"] == "api.bad_request"]
    assert [(e["log_level"], e["status"], e["code"]) for e in lines] == [("info", status, code)]
    assert not any(r.exc_info for r in logs.records if r.name.startswith("aiohttp"))


async def test_a_body_that_does_not_decode_is_never_an_error_log_even_unread(
    server: HttpServer, logs: Logs
) -> None:
    """Found: a route that does not read the body answered, then aiohttp's lingering read
    hit the broken gzip and logged "Unhandled exception" with a traceback."""
    garbage = b"\x1f\x8b\x08\x00garbage" + b"x" * 100
    for method, path in (("GET", "/healthz"), ("POST", "/v1/otp"), ("GET", "/nope")):
        answer = await exchange(
            server.port,
            request(method, path, garbage, {"Authorization": AUTH, "Content-Encoding": "gzip"}),
        )
        assert answer.status < 500, answer
        assert answer.content_type == "application/json"


async def test_a_client_that_hangs_up_mid_body_is_not_logged_as_an_error(
    server: HttpServer, logs: Logs
) -> None:
    """Found: the ConnectionResetError from the body read went out as api.unhandled_error
    with a traceback."""
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            request(
                "POST",
                "/v1/otp",
                headers={"Authorization": AUTH, "Content-Length": "1000"},
            )
            + b'{"user_id": '
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
    await asyncio.sleep(0.2)
    assert not [e for e in logs.structlog_lines if e["event"] == "api.unhandled_error"]
    # and the server is fine
    assert (await exchange(server.port, request("GET", "/healthz"))).status == 200
