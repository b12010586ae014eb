"""Thousands of generated requests over every route of a real server: no 5xx, every JSON
error in the uniform shape, the hosted page in its own (html or 303), and not one error
line in the logs.

Requests go over raw sockets, so the generator can send what aiohttp's client refuses to:
bad methods and versions, broken framing (Content-Length mismatches, chunked garbage),
bodies that do not decode (gzip, deflate, br), header bytes no client would write.

The examples are the same on every run, so a failure reproduces; ``OTPD_FUZZ_RANDOM=1``
explores new ones (then print the failing request from the assertion and make it a plain
test in ``test_hostile_input.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otpd.api import HOSTED_VERIFY_PATH, HttpServer, create_app
from tests.api.helpers import assert_error
from tests.api.rawhttp import (
    AUTH,
    FAILURE_URL,
    SUCCESS_URL,
    Closed,
    RawResponse,
    captured_logs,
    read_response,
    served_config,
)
from tests.conftest import ConfigFactory

BATCH = 16  # requests per generated example, sent concurrently
PARSER_CODES = {"bad_request", "uri_too_long", "headers_too_large", "request_timeout"}
# the generator shares the server's loop: a busy batch must not look like a slow client
TIMEOUTS = {"header_timeout_seconds": 1.5, "body_timeout_seconds": 1.0}
MAX_BODY = 65536


@dataclass(frozen=True)
class Case:
    """One generated request: what it was aimed at and the bytes that went out."""

    route: str  # "METHOD /template" of the route it was generated for, or "other"
    method: str
    path: str
    data: bytes
    clean: bool  # framing and headers a browser or HTTP client would send


# ---------------------------------------------------------------- values and bodies

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00x\ud83d"])
NAME = st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True)
TEXT = st.one_of(
    st.text(max_size=24),
    st.text(alphabet=st.characters(codec="ascii"), max_size=12),
    SURROGATES,
    st.integers(0, 5000).map(lambda n: "x" * n),
    st.sampled_from(["", " ", "\x00", "{{ 7*7 }}", "<script>", "+491701234567", "a@b.co"]),
)
NUMBERS = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**40), 10**40),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)

EMAIL = st.one_of(
    NAME.map(lambda n: f"{n}@example.com"),
    st.emails().map(str),
    st.sampled_from(["a@b", "@", "x" * 300]),
    TEXT,
)
PHONE = st.one_of(st.sampled_from(["+491701234567", "+14155552671", "555", "+0"]), TEXT)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes anything at all."""
    return st.integers(0, 4).flatmap(lambda n: JSON_VALUES if n == 0 else valid)


def schema(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies shaped like the route's schema: every kind of wrong value, unknown fields and
    missing ones now and then, and many that are just right."""
    exact = st.fixed_dictionaries(required, optional=optional)
    loose = st.fixed_dictionaries(
        {k: field(v) for k, v in required.items()},
        optional={**{k: field(v) for k, v in optional.items()}, "extra": JSON_VALUES},
    )
    return st.one_of(exact, loose)


TOKEN = st.one_of(st.from_regex(r"[A-Za-z0-9_\-]{24}\.[A-Za-z0-9_\-]{43}", fullmatch=True), TEXT)
LINK_REQUEST = schema(
    {"user_id": NAME, "email": EMAIL},
    {
        "name": TEXT,
        "locale": st.sampled_from(["de", "en-GB", "xx", "../../etc"]),
        "client_ip": TEXT,
    },
)
BODIES: dict[str, st.SearchStrategy[Any]] = {
    "/v1/otp": schema(
        {"user_id": NAME, "channel": st.sampled_from(["email", "sms", "both", "fax"])},
        {"email": EMAIL, "phone": PHONE, "purpose": TEXT, "locale": TEXT, "client_ip": TEXT},
    ),
    "/v1/otp/verify": schema(
        {"user_id": NAME, "code": st.from_regex(r"[0-9]{4,10}", fullmatch=True)},
        {"purpose": TEXT, "user_agent": TEXT},
    ),
    "/v1/messages": schema(
        {"channel": st.sampled_from(["email", "sms"]), "to": st.one_of(EMAIL, PHONE)},
        {
            "template": st.sampled_from(["password_changed", "otp_code", "nope", "../x"]),
            "context": st.dictionaries(TEXT, JSON_VALUES, max_size=4),
            "subject": TEXT,
            "text": TEXT,
            "html": TEXT,
            "idempotency_key": TEXT,
        },
    ),
    "/v1/email-verifications": LINK_REQUEST,
    "/v1/password-resets": LINK_REQUEST,
    "/v1/email-verifications/confirm": schema({"token": TOKEN}, {}),
    "/v1/password-resets/check": schema({"token": TOKEN}, {}),
    "/v1/password-resets/confirm": schema({"token": TOKEN}, {}),
    "/v1/email-verifications/reminders": schema(
        {"users": st.lists(schema({"user_id": NAME, "email": EMAIL}, {"name": TEXT}), max_size=3)},
        {},
    ),
}


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from([31, 32, 33, 100, 400, 600, 900, 990, 1000, 5000, 20000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")]))
    closed = draw(st.booleans())
    return b'{"x":' + opener * depth + b"1" + (closer * depth if closed else b"") + b"}"


def encode_json(value: Any, ascii_only: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def json_body(draw: st.DrawFn, path: str, hostile: bool) -> bytes:
    kinds = ["schema"] * 4 + ["any", "deep", "numbers", "bytes", "big"] if hostile else ["schema"]
    kind = draw(st.sampled_from(kinds))
    if kind == "schema" and path in BODIES:
        return encode_json(draw(BODIES[path]), draw(st.booleans()))
    if kind == "deep":
        return draw(deep_json())
    if kind == "numbers":
        literal = draw(
            st.sampled_from(
                [b"1" * 5000, b"-" + b"9" * 4301, b"1e999999", b"NaN", b"-Infinity", b"1.5e-400"]
            )
        )
        return b'{"user_id": ' + literal + b', "channel": ' + literal + b"}"
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "big":
        size = draw(st.sampled_from([MAX_BODY - 20, MAX_BODY + 1, 3 * MAX_BODY]))
        return b'{"user_id": "' + b"a" * size + b'"}'
    return encode_json(draw(JSON_VALUES), draw(st.booleans()))


@st.composite
def form_body(draw: st.DrawFn, hostile: bool) -> tuple[bytes, str]:
    """A body for the hosted form, and its Content-Type."""
    kinds = ["form", "form", "raw", "multipart", "json"] if hostile else ["form"]
    kind = draw(st.sampled_from(kinds))
    if kind == "form":
        token = draw(TOKEN).encode("utf-8", "surrogatepass")
        value = draw(st.sampled_from([quote(token), token.decode("latin-1"), "%ff%fe", "%", ""]))
        extra = draw(st.sampled_from(["", "&token=second", "&a=%zz", "&" * 5, "&x=" + "y" * 500]))
        charset = draw(
            st.sampled_from(["", "; charset=utf-8", "; charset=latin-1", "; charset=nope"])
        )
        return (
            f"token={value}{extra}".encode("utf-8", "surrogatepass"),
            "application/x-www-form-urlencoded" + charset,
        )
    if kind == "raw":
        return draw(st.binary(max_size=300)), draw(
            st.sampled_from(["application/x-www-form-urlencoded", ""])
        )
    if kind == "multipart":
        boundary = draw(st.sampled_from(["b", "", '"', "x" * 80, "é"]))
        part = draw(st.binary(max_size=100))
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=token\r\n\r\n".encode()
            + part
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return body, draw(
            st.sampled_from(
                [f"multipart/form-data; boundary={boundary}", "multipart/form-data", "multipart/x"]
            )
        )
    return encode_json(draw(JSON_VALUES), True), "application/json"


# ---------------------------------------------------------------- framing and headers


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = b"", body
    for size in sizes:
        piece, rest = rest[:size], rest[size:]
        if piece:  # an empty chunk would end the body
            out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + (f"{len(rest):x}\r\n".encode() + rest + b"\r\n" if rest else b"") + b"0\r\n\r\n"


@st.composite
def encoded(
    draw: st.DrawFn, body: bytes, hostile: bool
) -> tuple[bytes, list[tuple[str, str]], bool]:
    """The body as sent, its Content-Encoding header (if any) and whether it is honest."""
    kinds = ["identity"] * 6 + ["gzip", "deflate"] + (["lie", "garbage"] if hostile else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "gzip":
        return gzip.compress(body), [("Content-Encoding", "gzip")], True
    if kind == "deflate":
        return zlib.compress(body), [("Content-Encoding", "deflate")], True
    if kind == "lie":
        name = draw(st.sampled_from(["gzip", "deflate", "br", "zstd", "gzip, deflate", "x"]))
        return body, [("Content-Encoding", name)], False
    if kind == "garbage":
        name = draw(st.sampled_from(["gzip", "deflate", "br"]))
        junk = draw(st.sampled_from([b"\x1f\x8b\x08\x00garbage", b"\x78\x9c\xff\xff", b"\xce\xb2"]))
        return junk + body[:20], [("Content-Encoding", name)], False
    return body, [], True


@st.composite
def framed(
    draw: st.DrawFn, body: bytes, hostile: bool
) -> tuple[bytes, list[tuple[str, str]], bool]:
    """The body on the wire with its length headers, and whether the framing is honest."""
    kinds = ["length"] * 6 + ["chunked"]
    kinds += ["short", "long", "junk", "bad_chunks", "none"] if hostile else []
    kind = draw(st.sampled_from(kinds))
    if kind == "length":
        return body, [("Content-Length", str(len(body)))], True
    if kind == "chunked":
        sizes = draw(st.lists(st.integers(1, 64), max_size=4))
        return chunked(body, sizes), [("Transfer-Encoding", "chunked")], True
    if kind == "short":  # the rest is read as the next (garbage) request
        return body, [("Content-Length", str(max(len(body) - 3, 0)))], False
    if kind == "long":  # the server waits for bytes that never come: the body deadline
        return body, [("Content-Length", str(len(body) + 10))], False
    if kind == "junk":
        value = draw(st.sampled_from(["-1", "abc", "1e3", " 12", "99999999999999999999", "0x10"]))
        both = draw(st.booleans())
        extra = [("Transfer-Encoding", "chunked")] if both else []
        return body, [("Content-Length", value), *extra], False
    if kind == "bad_chunks":
        chunk = draw(
            st.sampled_from(
                [b"ZZ\r\nabc\r\n0\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"-1\r\n", b"fffffffff\r\n"]
            )
        )
        te = draw(st.sampled_from(["chunked", "gzip, chunked", "chunked, chunked", "identity"]))
        return chunk, [("Transfer-Encoding", te)], False
    return b"", [], True  # no body at all


HEADER_NAME = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=20,
)
HEADER_VALUE = st.text(alphabet=st.characters(max_codepoint=255), max_size=40)
WEIRD_HEADERS = st.lists(
    st.one_of(
        st.tuples(HEADER_NAME, HEADER_VALUE),
        st.sampled_from(
            [
                ("Accept-Language", "de-DE,de;q=0.9"),
                ("Accept-Language", "\x00;;,,q=x"),
                ("Accept-Language", "x" * 200),
                ("Expect", "100-continue"),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Host", ""),
                ("X-Forwarded-For", "1.2.3.4, ::1"),
                ("Bad Header", "a"),
                ("X-Long", "a" * 9000),
                ("X-Nul", "a\x00b"),
            ]
        ),
    ),
    max_size=3,
)


@st.composite
def authorization(draw: st.DrawFn, hostile: bool) -> list[tuple[str, str]]:
    kinds = ["valid", "valid", "none", "wrong", "garbage"] if hostile else ["valid"] * 9 + ["none"]
    kind = draw(st.sampled_from(kinds))
    if kind == "valid":
        return [("Authorization", AUTH)]
    if kind == "wrong":
        return [("Authorization", "Bearer not-the-key")]
    if kind == "garbage":
        return [("Authorization", draw(st.sampled_from(["Bearer", "Bearer  ", "Basic eA==", "é"])))]
    return []


# ---------------------------------------------------------------- targets and requests

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT"]
BAD_METHODS = ["G@T", "", "get", "POST /", "\x16\x03\x01", "M" * 40]


@st.composite
def target(draw: st.DrawFn, template: str, hostile: bool) -> str:
    path = template
    if "{task_id}" in path:
        task_id = draw(
            st.one_of(
                st.from_regex(r"tsk_[0-9a-f]{8,32}", fullmatch=True),
                st.text(max_size=30).map(lambda t: quote(t.encode("utf-8", "surrogatepass"))),
                st.sampled_from(["%zz", "%00", "..%2F..", "a%2Fb", "x" * 3000]),
            )
        )
        path = path.replace("{task_id}", task_id)
    if hostile:
        path += draw(st.sampled_from(["", "", "/", "//", "/..", "%", "?", "#frag", ";x"]))
    if draw(st.integers(0, 3)) == 0:
        pairs = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["token", "a", "", "%ff"]),
                    st.one_of(
                        TOKEN.map(lambda t: quote(t.encode("utf-8", "surrogatepass"))),
                        st.sampled_from(["%ff%fe", "%", "%c0%af", "a+b", "x" * 500]),
                    ),
                ),
                max_size=3,
            )
        )
        path += "?" + "&".join(f"{k}={v}" for k, v in pairs)
    return path


@st.composite
def case(draw: st.DrawFn, routes: list[tuple[str, str]]) -> Case:
    """Half of them plausible (right method, framing and headers; bodies that fit the
    schema or nearly), half hostile in every part."""
    hostile = draw(st.booleans())
    aimed = not hostile or draw(st.integers(0, 4)) > 0
    if aimed:
        method, template = draw(st.sampled_from(routes))
        route = f"{method} {template}"
    else:
        method = draw(st.sampled_from(METHODS))
        template = draw(st.sampled_from(["/", "/v1", "/v1/nope", "/l/", "/x" * 50]))
        route = "other"
    if hostile and draw(st.integers(0, 2)) == 0:
        method = draw(st.sampled_from(METHODS + BAD_METHODS))
    path = draw(target(template, hostile))
    headers = draw(authorization(hostile))
    if template == HOSTED_VERIFY_PATH and method == "POST":
        body, content_type = draw(form_body(hostile))
        headers.append(("Content-Type", content_type))
    elif method in ("POST", "PUT", "PATCH") or (hostile and draw(st.integers(0, 5)) == 0):
        body = draw(json_body(template, hostile))
        types = ["application/json"] * 4
        types += ["application/json; charset=utf-16", "text/plain", "", "multipart/form-data"]
        content_type = draw(st.sampled_from(types)) if hostile else "application/json"
        if content_type:
            headers.append(("Content-Type", content_type))
    else:
        body = b""
    body, encoding, honest = draw(encoded(body, hostile))
    headers += encoding
    wire, framing, well_framed = draw(framed(body, hostile))
    headers += framing
    extra = draw(WEIRD_HEADERS) if hostile else []
    headers += extra
    clean = honest and well_framed and not extra and not path.count("%")
    versions = ["HTTP/1.1"] * 4 + (["HTTP/1.0", "HTTP/2.0", "HTTP/9", "HTTX"] if hostile else [])
    version = draw(st.sampled_from(versions))
    clean = clean and version == "HTTP/1.1" and method in METHODS
    head = f"{method} {path} {version}\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return Case(route, method, path, head.encode("utf-8", "surrogatepass") + wire, clean)


# ---------------------------------------------------------------- checking an answer


@dataclass
class Tally:
    sent: Counter[str]
    statuses: Counter[int]
    codes: Counter[str]
    unanswered: Counter[str]
    failures: list[str]

    @classmethod
    def new(cls) -> Tally:
        return cls(Counter(), Counter(), Counter(), Counter(), [])


def check(case: Case, answer: RawResponse) -> None:
    assert answer.status < 500, answer
    path = case.path.split("#")[0].split("?")[0]
    hosted = path == HOSTED_VERIFY_PATH and case.method in ("GET", "HEAD")
    hosted_post = path == HOSTED_VERIFY_PATH and case.method == "POST"
    if answer.content_type == "text/html":
        assert hosted or hosted_post, answer
        assert answer.status in (200, 400), answer
        return
    if answer.status == 303:
        assert hosted_post, answer
        assert answer.headers["location"] in (SUCCESS_URL, FAILURE_URL), answer
        return
    if case.clean and (hosted or hosted_post):
        raise AssertionError(f"the hosted page answered outside its shape: {answer}")
    if case.route.endswith("/metrics") and answer.status == 200:
        assert answer.content_type == "text/plain", answer
        return
    if case.method == "HEAD" and answer.status < 400:
        return
    assert answer.content_type == "application/json", answer
    if case.method == "HEAD":
        return  # no body to check
    body = answer.json()
    if answer.status >= 400:
        assert_error(body)
        if case.clean:  # nothing an HTTP client sends is malformed HTTP
            assert body["error"]["code"] not in PARSER_CODES, answer


async def send(port: int, case: Case, tally: Tally) -> None:
    tally.sent[case.route] += 1
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(case.data)
                answer = await read_response(reader, head_only=case.method == "HEAD")
            finally:
                writer.close()
    except (Closed, ConnectionError):
        tally.unanswered[case.route] += 1
        if case.clean:
            tally.failures.append(f"no answer to a clean request: {case.data[:300]!r}")
        return
    except TimeoutError:
        tally.unanswered[case.route] += 1
        tally.failures.append(f"no answer and no close in time: {case.data[:300]!r}")
        return
    tally.statuses[answer.status] += 1
    if answer.content_type == "application/json" and answer.status >= 400 and answer.body:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # check() reports it
            tally.codes[str(answer.json()["error"]["code"])] += 1
    try:
        check(case, answer)
    except (AssertionError, ValueError) as exc:
        tally.failures.append(f"{exc!r}\n  request: {case.data[:400]!r}\n  answer: {answer}")


# ---------------------------------------------------------------- the run


def app_routes(config: Any) -> list[tuple[str, str]]:
    """Every (method, path template) the application routes."""
    app = create_app(config)
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes() if r.resource})


@dataclass
class Running:
    loop: asyncio.AbstractEventLoop
    server: HttpServer


@pytest.fixture
def running(request: pytest.FixtureRequest, make_config: ConfigFactory) -> Iterator[Running]:
    """A real HttpServer on a loop of this test's own, run between examples: hypothesis
    drives a synchronous function, each example runs its requests to completion."""
    backend: str = request.param
    config = served_config(make_config, backend, **TIMEOUTS)
    loop = asyncio.new_event_loop()
    server = HttpServer(config, port=0)
    loop.run_until_complete(server.__aenter__())
    try:
        yield Running(loop, server)
    finally:
        loop.run_until_complete(server.__aexit__(None, None, None))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


EXPECTED_ROUTES = {
    ("POST", "/v1/otp"),
    ("POST", "/v1/otp/verify"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/tasks/{task_id}"),
    ("GET", "/v1/health/messaging"),
    ("POST", "/v1/email-verifications"),
    ("POST", "/v1/email-verifications/confirm"),
    ("POST", "/v1/email-verifications/reminders"),
    ("POST", "/v1/password-resets"),
    ("POST", "/v1/password-resets/check"),
    ("POST", "/v1/password-resets/confirm"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", HOSTED_VERIFY_PATH),
    ("POST", HOSTED_VERIFY_PATH),
}


@pytest.mark.slow
@pytest.mark.timeout(180)  # tens of seconds of CPU: a loaded machine must not fail it
@pytest.mark.parametrize(
    ("running", "examples"),
    [("memory", 240), pytest.param("redis", 100, id="redis")],
    indirect=["running"],
)
def test_generated_requests_never_break_the_server(running: Running, examples: int) -> None:
    routes = app_routes(running.server.config)
    assert set(routes) >= EXPECTED_ROUTES, sorted(EXPECTED_ROUTES - set(routes))
    tally = Tally.new()
    port = running.server.port

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("OTPD_FUZZ_RANDOM"),
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(case(routes), min_size=BATCH, max_size=BATCH))
    def batch(cases: list[Case]) -> None:
        async def go() -> None:
            await asyncio.gather(*(send(port, c, tally) for c in cases))

        running.loop.run_until_complete(go())

    started = time.monotonic()
    with captured_logs() as logs:
        batch()
        running.loop.run_until_complete(asyncio.sleep(0.6))  # lingering closes, log lines
    took = time.monotonic() - started
    total = sum(tally.sent.values())
    report = (
        f"sent {total} requests in {took:.1f} s; per route {dict(sorted(tally.sent.items()))}; "
        f"statuses {dict(sorted(tally.statuses.items()))}; codes {dict(tally.codes)}; "
        f"unanswered {dict(sorted(tally.unanswered.items()))}"
    )
    print(report)
    distinct = list(dict.fromkeys(tally.failures))
    assert not distinct, f"{len(distinct)} distinct failures:\n" + "\n".join(distinct[:8])
    assert not logs.errors(), "\n".join(logs.errors()[:10])
    assert total >= examples * BATCH
    assert all(tally.sent[f"{m} {p}"] for m, p in EXPECTED_ROUTES), report
    assert tally.statuses[200] and tally.statuses[202] and tally.statuses[422], report
