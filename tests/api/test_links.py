"""Email verification and password reset over HTTP, end to end through the dev outbox, on
both stores: request -> link in the outbox -> check/confirm -> the token is spent."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
import structlog

from otpd.api import HOSTED_VERIFY_PATH, HttpServer
from otpd.app import Otpd
from otpd.clock import FakeClock, rfc3339
from tests.api.helpers import (
    Client,
    Start,
    body_of,
    link_in,
    newest_mail,
    parse_eml,
    token_of,
    wait_task,
)
from tests.conftest import ConfigFactory, outbox_files, wait_idle

HOUR = 3600
DAY = 86400
EMAIL = "ada@example.com"


# ---------------------------------------------------------------- helpers


async def post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


async def request_link(
    client: Client, kind: str, user_id: str = "u1", email_: str = EMAIL, **extra: Any
) -> dict[str, Any]:
    """POST a verification (kind "email-verifications") or reset ("password-resets")."""
    status, body = await post(client, f"/v1/{kind}", {"user_id": user_id, "email": email_, **extra})
    assert status == 202, body
    assert set(body) == {"task_id", "expires_at"}
    return dict(body)


async def mailed_token(client: Client, daemon: Otpd, issued: dict[str, Any], tag: str) -> str:
    task = await wait_task(client, issued["task_id"])
    assert task["status"] == "sent", task
    return token_of(link_in(newest_mail(daemon.config, tag)))


def assert_invalid_token(status: int, body: Any) -> None:
    assert status == 400, body
    assert body["error"]["code"] == "invalid_token"
    assert set(body["error"]) == {"code", "message", "details"}


# ---------------------------------------------------------------- email verification


async def test_verification_link_from_the_outbox_confirms_once(
    start: Start, clock: FakeClock
) -> None:
    daemon, client = await start()
    issued = await request_link(client, "email-verifications", name="Ada", locale="en")
    assert issued["expires_at"] == rfc3339(clock.time() + 86400)
    token = await mailed_token(client, daemon, issued, "email_verification")
    msg = newest_mail(daemon.config, "email_verification")
    assert msg["To"] == EMAIL
    assert "Confirm your email address" in str(msg["Subject"])
    assert link_in(msg).startswith("http://127.0.0.1:8080/verify-email?token=")
    assert len(token) >= 43

    first = await post(client, "/v1/email-verifications/confirm", {"token": token})
    assert first == (200, {"user_id": "u1", "email": EMAIL})
    assert_invalid_token(*await post(client, "/v1/email-verifications/confirm", {"token": token}))


async def test_verification_link_uses_configured_base_url_and_path(start: Start) -> None:
    daemon, client = await start(
        links={"base_url": "https://accounts.example.com/", "verify_email_path": "/e/confirm"}
    )
    issued = await request_link(client, "email-verifications")
    await mailed_token(client, daemon, issued, "email_verification")
    link = link_in(newest_mail(daemon.config, "email_verification"))
    assert link.startswith("https://accounts.example.com/e/confirm?token=")


async def test_hosted_mode_mails_a_link_to_the_hosted_page(start: Start) -> None:
    daemon, client = await start(
        links={
            "base_url": "https://otpd.example.com",
            "hosted": True,
            "success_url": "https://app.example.com/welcome",
            "failure_url": "https://app.example.com/link-expired",
        }
    )
    issued = await request_link(client, "email-verifications")
    await mailed_token(client, daemon, issued, "email_verification")
    link = link_in(newest_mail(daemon.config, "email_verification"))
    assert link.startswith(f"https://otpd.example.com{HOSTED_VERIFY_PATH}?token=")


async def test_verification_token_expires_after_24_hours(start: Start, clock: FakeClock) -> None:
    daemon, client = await start()
    token = await mailed_token(
        client,
        daemon,
        await request_link(client, "email-verifications"),
        "email_verification",
    )
    clock.advance(DAY - 1)
    still = await mailed_token(
        client,
        daemon,
        await request_link(client, "email-verifications", "u2"),
        "email_verification",
    )
    clock.advance(1)
    assert_invalid_token(*await post(client, "/v1/email-verifications/confirm", {"token": token}))
    # u2's token, issued a day minus one second later, is still live
    status, _ = await post(client, "/v1/email-verifications/confirm", {"token": still})
    assert status == 200


async def test_new_verification_request_supersedes_the_previous_link(start: Start) -> None:
    daemon, client = await start()
    old = await mailed_token(
        client, daemon, await request_link(client, "email-verifications"), "email_verification"
    )
    new = await mailed_token(
        client, daemon, await request_link(client, "email-verifications"), "email_verification"
    )
    assert old != new
    assert_invalid_token(*await post(client, "/v1/email-verifications/confirm", {"token": old}))
    status, body = await post(client, "/v1/email-verifications/confirm", {"token": new})
    assert (status, body["user_id"]) == (200, "u1")


async def test_verification_allows_5_per_user_per_day_then_429(
    start: Start, clock: FakeClock
) -> None:
    _, client = await start()
    for _ in range(5):
        await request_link(client, "email-verifications")
        clock.advance(60)
    resp = await client.post("/v1/email-verifications", json={"user_id": "u1", "email": EMAIL})
    body = await resp.json()
    assert resp.status == 429, body
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["details"]["scope"] == "user_day"
    retry_after = int(resp.headers["Retry-After"])
    assert DAY - 5 * 60 <= retry_after <= DAY
    # another user is not affected; the same user may ask again once the first hit ages out
    await request_link(client, "email-verifications", "u2")
    clock.advance(DAY - 5 * 60 + 1)
    await request_link(client, "email-verifications")


async def test_verification_per_ip_limit_is_configurable_and_answers_429(start: Start) -> None:
    _, client = await start(tokens={"verification_per_ip_hour": 2})
    ip = {"client_ip": "203.0.113.7"}
    await request_link(client, "email-verifications", "u1", **ip)
    await request_link(client, "email-verifications", "u2", **ip)
    status, body = await post(
        client, "/v1/email-verifications", {"user_id": "u3", "email": EMAIL, **ip}
    )
    assert status == 429
    assert body["error"]["details"]["scope"] == "ip_hour"
    await request_link(client, "email-verifications", "u3", client_ip="203.0.113.8")


async def test_refused_verification_request_keeps_the_live_token(
    start: Start, clock: FakeClock
) -> None:
    daemon, client = await start(tokens={"verification_per_user_day": 1})
    token = await mailed_token(
        client, daemon, await request_link(client, "email-verifications"), "email_verification"
    )
    status, _ = await post(client, "/v1/email-verifications", {"user_id": "u1", "email": EMAIL})
    assert status == 429
    status, _ = await post(client, "/v1/email-verifications/confirm", {"token": token})
    assert status == 200


# ---------------------------------------------------------------- password reset


async def test_reset_link_checks_without_consuming_then_confirms_once(
    start: Start, clock: FakeClock
) -> None:
    daemon, client = await start(links={"reset_password_path": "/account/new-password"})
    issued = await request_link(
        client, "password-resets", client_ip="198.51.100.4", user_agent="Firefox/140"
    )
    expires_at = rfc3339(clock.time() + HOUR)
    assert issued["expires_at"] == expires_at
    token = await mailed_token(client, daemon, issued, "password_reset")
    msg = newest_mail(daemon.config, "password_reset")
    assert link_in(msg).startswith("http://127.0.0.1:8080/account/new-password?token=")
    assert "198.51.100.4" in body_of(msg, "plain")

    for _ in range(3):
        status, body = await post(client, "/v1/password-resets/check", {"token": token})
        assert (status, body) == (200, {"user_id": "u1", "email": EMAIL, "expires_at": expires_at})
    confirmed = await post(client, "/v1/password-resets/confirm", {"token": token})
    assert confirmed == (200, {"user_id": "u1", "email": EMAIL})
    assert_invalid_token(*await post(client, "/v1/password-resets/confirm", {"token": token}))
    assert_invalid_token(*await post(client, "/v1/password-resets/check", {"token": token}))


async def test_reset_token_expires_after_one_hour(start: Start, clock: FakeClock) -> None:
    daemon, client = await start()
    token = await mailed_token(
        client, daemon, await request_link(client, "password-resets"), "password_reset"
    )
    clock.advance(HOUR - 1)
    assert (await post(client, "/v1/password-resets/check", {"token": token}))[0] == 200
    clock.advance(1)
    assert_invalid_token(*await post(client, "/v1/password-resets/check", {"token": token}))
    assert_invalid_token(*await post(client, "/v1/password-resets/confirm", {"token": token}))


async def test_new_reset_request_supersedes_the_previous_link(start: Start) -> None:
    daemon, client = await start()
    old = await mailed_token(
        client, daemon, await request_link(client, "password-resets"), "password_reset"
    )
    new = await mailed_token(
        client, daemon, await request_link(client, "password-resets"), "password_reset"
    )
    assert_invalid_token(*await post(client, "/v1/password-resets/check", {"token": old}))
    assert_invalid_token(*await post(client, "/v1/password-resets/confirm", {"token": old}))
    assert (await post(client, "/v1/password-resets/confirm", {"token": new}))[0] == 200


async def test_reset_allows_3_per_email_per_hour_then_drops_silently(
    start: Start, clock: FakeClock
) -> None:
    daemon, client = await start()
    tasks = []
    for i in range(4):
        # different user ids: the limit is on the address
        tasks.append(await request_link(client, "password-resets", f"u{i}"))
        clock.advance(60)
    results = [await wait_task(client, t["task_id"]) for t in tasks]
    assert [r["status"] for r in results] == ["sent", "sent", "sent", "failed"]
    assert results[3]["last_error"] == "rate_limited: email_hour"
    assert results[3]["attempts"] == 0
    assert len(outbox_files(daemon.config, ".eml")) == 3
    # the dropped request answered exactly like the others
    assert tasks[3]["expires_at"] == rfc3339(clock.time() - 60 + HOUR)
    clock.advance(HOUR - 4 * 60 + 1)
    again = await request_link(client, "password-resets", "u9")
    assert (await wait_task(client, again["task_id"]))["status"] == "sent"


async def test_reset_per_ip_limit_drops_silently_at_its_boundary(start: Start) -> None:
    _, client = await start(tokens={"reset_per_ip_hour": 3})
    ip = "192.0.2.1"
    tasks = [
        await request_link(client, "password-resets", f"u{i}", f"p{i}@example.com", client_ip=ip)
        for i in range(4)
    ]
    results = [await wait_task(client, t["task_id"]) for t in tasks]
    assert [r["status"] for r in results] == ["sent", "sent", "sent", "failed"]
    assert results[3]["last_error"] == "rate_limited: ip_hour"
    other = await request_link(client, "password-resets", "u9", client_ip="192.0.2.2")
    assert (await wait_task(client, other["task_id"]))["status"] == "sent"


async def test_silently_dropped_reset_keeps_the_previous_token_live(start: Start) -> None:
    daemon, client = await start(tokens={"reset_per_email_hour": 1})
    token = await mailed_token(
        client, daemon, await request_link(client, "password-resets"), "password_reset"
    )
    dropped = await request_link(client, "password-resets")
    assert (await wait_task(client, dropped["task_id"]))["status"] == "failed"
    assert (await post(client, "/v1/password-resets/confirm", {"token": token}))[0] == 200


# A separate process plays the remote caller: a client inside the daemon's own event loop
# would also time the background delivery that runs after the response has left. The test
# hands it one request at a time, each once the daemon's deliveries have settled, so the
# work a sent reset leaves behind never weighs on the next request itself; the requests
# go in blocks (see reset_timing) so that whatever the rest of the machine does at a
# moment weighs on both kinds alike.
TIMING_CLIENT = r"""
import http.client, json, sys, time
port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for line in sys.stdin:
    data = line.strip().encode()
    started = time.perf_counter()
    conn.request("POST", "/v1/password-resets", data, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    elapsed = time.perf_counter() - started
    answer = [elapsed, resp.status, resp.getheader("Content-Type"), json.loads(payload)]
    print(json.dumps(answer), flush=True)
"""

TIMING_PAIRS = 500
# The fast-path gap (sent minus dropped) must stay within this. Seen here: -0.12 to +0.004
# ms on a quiet machine, -0.02 to +0.11 ms with both cores kept busy by other processes.
TIMING_BOUND_MS = 0.2
# One more template render on one side (~0.14 ms of CPU here) must move the gap by at least
# this much in the same run: the measurement resolves what the bound is there to catch.
TIMING_RESOLUTION_MS = 0.07


def fast_path_gap(order: list[str], ms: list[float]) -> float:
    """Sent minus dropped, in ms, at the 10th percentile of each kind's latencies. A busy
    machine adds delay to some requests and never takes any away, so the fast end of each
    distribution is where the cost of the code itself shows, steady under load (medians
    moved by 0.3 to 0.5 ms from run to run with both cores kept busy; this by 0.1)."""

    def p10(kind: str) -> float:
        times = sorted(t for k, t in zip(order, ms, strict=True) if k == kind)
        return times[len(times) // 10]

    return p10("sent") - p10("dropped")


async def reset_timing(
    daemon: Otpd, port: int, pairs: int, seed: int
) -> tuple[float, list[list[Any]]]:
    """The fast-path gap (ms, sent minus dropped) over ``pairs`` requests of each kind, and
    the raw answers. The victim's address is over its limit, so requests to it are dropped.

    The requests go in blocks of four, sent-dropped-dropped-sent, so that each kind
    follows a sent request, which leaves a delivery behind it, exactly as often as a
    dropped one.
    """
    victim = f"victim{seed}@example.com"
    warmup = [{"user_id": f"w{seed}-{i}", "email": victim} for i in range(3)]
    order: list[str] = []
    bodies: list[dict[str, Any]] = []
    for i in range(2 * pairs):
        kind = ("sent", "dropped", "dropped", "sent")[i % 4]
        order.append(kind)
        email_ = f"user{seed}-{i}@example.com" if kind == "sent" else victim
        bodies.append({"user_id": f"u{seed}-{i}", "email": email_, "name": "Ada Lovelace"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TIMING_CLIENT,
        str(port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    answers = []
    for body in warmup + bodies:
        await wait_idle(daemon)
        proc.stdin.write(json.dumps(body).encode() + b"\n")
        await proc.stdin.drain()
        answers.append(json.loads(await proc.stdout.readline()))
    proc.stdin.close()
    assert await proc.wait() == 0
    answers = answers[len(warmup) :]
    diffs = fast_path_gap(order, [answer[0] * 1000 for answer in answers])
    for kind, answer in zip(order, answers, strict=True):
        answer.append(kind)
    await wait_idle(daemon)
    return diffs, answers


@pytest.mark.timing
async def test_reset_answers_alike_in_status_shape_and_time_whether_sent_or_dropped(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    """Enumeration: over many requests, a silently dropped reset looks like a sent one, and
    the same measurement does tell the two apart once one side does one render more."""
    config = make_config(backend, email={"global_hour": 50_000})
    # Log lines are kept in memory: blocking writes to a slow terminal (pytest -s) would
    # time the test's stdout, not otpd.
    with structlog.testing.capture_logs() as logs:
        async with Otpd(config, clock=clock) as daemon, HttpServer(daemon, port=0) as server:
            diffs, answers = await reset_timing(daemon, server.port, TIMING_PAIRS, seed=1)
            for _, status, content_type, body, _ in answers:
                assert (status, content_type) == (202, "application/json; charset=utf-8"), body
                assert set(body) == {"task_id", "expires_at"}
            for *_, body, kind in answers[:10]:
                task = await daemon.tasks.get(body["task_id"])
                assert task.status.value == ("sent" if kind == "sent" else "failed"), task

            # The same measurement with one template render more on the dropped side only.
            reject = daemon.dispatcher.reject

            async def slower(message: Any, reason: str, **kw: Any) -> Any:
                await daemon.renderer.render_email("password_reset", RENDER_CONTEXT)
                return await reject(message, reason, **kw)

            daemon.dispatcher.reject = slower  # type: ignore[method-assign]
            planted, _ = await reset_timing(daemon, server.port, TIMING_PAIRS, seed=2)
    assert sum(e["event"] == "audit.password_reset_rate_limited" for e in logs) == 2 * TIMING_PAIRS
    gap, planted_gap = diffs, planted
    # the numbers are the point of this test: see them with pytest -s
    print(
        f"\n[{backend}] reset timing, {TIMING_PAIRS} of each: p10(sent) - p10(dropped) "
        f"{gap:+.3f} ms; with one more render when dropped {planted_gap:+.3f} ms"
    )
    assert abs(gap) < TIMING_BOUND_MS, (gap, planted_gap)
    # and the instrument resolves a difference of one render, wherever the baseline is
    assert planted_gap - gap < -TIMING_RESOLUTION_MS, (gap, planted_gap)


RENDER_CONTEXT = {
    "name": "Ada",
    "link": "https://app.example.com/reset?token=x",
    "ttl_minutes": 60,
    "client_ip": "",
    "user_agent": "",
}


# ---------------------------------------------------------------- tokens: one answer


async def test_every_dead_token_gets_the_same_invalid_token_answer(
    start: Start, clock: FakeClock
) -> None:
    daemon, client = await start()

    async def verification(user_id: str) -> str:
        issued = await request_link(client, "email-verifications", user_id)
        return await mailed_token(client, daemon, issued, "email_verification")

    used = await verification("used")
    assert (await post(client, "/v1/email-verifications/confirm", {"token": used}))[0] == 200
    superseded = await verification("sup")
    await verification("sup")
    expired = await verification("exp")
    live = await verification("live")
    forged = live.split(".")[0] + "." + "A" * 43
    clock.advance(DAY)  # expires "exp" and "live" alike
    answers = []
    for token in (
        used,
        superseded,
        expired,
        forged,
        "A" * 68,
        "",
        "not a token",
        live + "x",
        "\u00e9" * 68,
    ):
        status, body = await post(client, "/v1/email-verifications/confirm", {"token": token})
        assert_invalid_token(status, body)
        answers.append(body)
    assert all(a == answers[0] for a in answers)


async def test_a_verification_token_does_not_work_as_a_reset_token(start: Start) -> None:
    daemon, client = await start()
    token = await mailed_token(
        client, daemon, await request_link(client, "email-verifications"), "email_verification"
    )
    assert_invalid_token(*await post(client, "/v1/password-resets/check", {"token": token}))
    assert_invalid_token(*await post(client, "/v1/password-resets/confirm", {"token": token}))
    assert (await post(client, "/v1/email-verifications/confirm", {"token": token}))[0] == 200


async def test_concurrent_confirms_of_one_token_succeed_exactly_once(start: Start) -> None:
    daemon, client = await start()
    token = await mailed_token(
        client, daemon, await request_link(client, "password-resets"), "password_reset"
    )
    results = await asyncio.gather(
        *(post(client, "/v1/password-resets/confirm", {"token": token}) for _ in range(25))
    )
    assert sorted(status for status, _ in results) == [200] + [400] * 24


async def test_request_bodies_are_validated_with_422(start: Start) -> None:
    _, client = await start()
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/email-verifications", {"user_id": "u1"}, "email"),
        ("/v1/email-verifications", {"user_id": "u1", "email": "nope"}, "email"),
        ("/v1/password-resets", {"user_id": "u 1", "email": EMAIL}, "user_id"),
        ("/v1/password-resets", {"user_id": "u1", "email": EMAIL, "locale": "x!"}, "locale"),
        ("/v1/password-resets", {"user_id": "u1", "email": EMAIL, "name": "a\x00b"}, "name"),
        ("/v1/email-verifications/confirm", {"token": 5}, "token"),
        ("/v1/password-resets/check", {}, "token"),
        ("/v1/email-verifications/reminders", {"users": {}}, "users"),
    ]
    for path, body, field in cases:
        status, data = await post(client, path, body)
        assert status == 422, (path, body, data)
        assert data["error"]["code"] == "validation_error"
        assert field in data["error"]["details"]["fields"], data


# ---------------------------------------------------------------- reminders


async def test_reminders_queue_fresh_links_and_skip_with_reasons(
    start: Start, clock: FakeClock
) -> None:
    daemon, client = await start(tokens={"verification_per_user_day": 2})
    old = await mailed_token(
        client, daemon, await request_link(client, "email-verifications", "a"), "email_verification"
    )
    await request_link(client, "email-verifications", "limited")
    await request_link(client, "email-verifications", "limited")
    users = [
        {"user_id": "a", "email": "a@example.com", "name": "Ann"},
        {"user_id": "b", "email": "b@example.com"},
        {"user_id": "a", "email": "a2@example.com"},
        {"user_id": "c", "email": "not-an-address"},
        {"user_id": "limited", "email": "l@example.com"},
    ]
    status, body = await post(client, "/v1/email-verifications/reminders", {"users": users})
    assert status == 202, body
    assert body == {
        "queued": 2,
        "skipped": [
            {"user_id": "a", "reason": "duplicate"},
            {"user_id": "c", "reason": "invalid_email"},
            {"user_id": "limited", "reason": "rate_limited"},
        ],
    }
    for _ in range(500):
        reminders = [
            p for p in outbox_files(daemon.config, ".eml") if "-verification_rem" in p.name
        ]
        if len(reminders) == 2:
            break
        await asyncio.sleep(0.01)
    mails = {str(m["To"]): m for m in (parse_eml(p) for p in reminders)}
    assert set(mails) == {"a@example.com", "b@example.com"}
    assert "Reminder" in str(mails["a@example.com"]["Subject"])
    assert "Hi Ann," in body_of(mails["a@example.com"], "plain")
    fresh = token_of(link_in(mails["a@example.com"]))
    # the reminder's fresh token replaced the earlier link
    assert_invalid_token(*await post(client, "/v1/email-verifications/confirm", {"token": old}))
    status, data = await post(client, "/v1/email-verifications/confirm", {"token": fresh})
    assert (status, data) == (200, {"user_id": "a", "email": "a@example.com"})


async def test_reminders_accept_1000_users_and_refuse_1001(start: Start) -> None:
    daemon, client = await start(email={"global_hour": 5000}, dispatch={"queue_size": 5000})
    users = [{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(1001)]
    status, body = await post(client, "/v1/email-verifications/reminders", {"users": users})
    assert status == 422
    assert "users" in body["error"]["details"]["fields"]
    status, body = await post(client, "/v1/email-verifications/reminders", {"users": users[:1000]})
    assert (status, body) == (202, {"queued": 1000, "skipped": []})
    # Let the deliveries finish rather than leave 1000 messages to the shutdown drain.
    sent = 'otpd_tasks_total{channel="email",status="sent"} 1000.0'
    for _ in range(3000):
        if sent in daemon.metrics.render().decode():
            break
        await asyncio.sleep(0.01)
    assert sent in daemon.metrics.render().decode()


# ---------------------------------------------------------------- secrecy


async def test_token_never_appears_in_logs_metrics_or_task_records(start: Start) -> None:
    daemon, client = await start()
    with structlog.testing.capture_logs() as logs:
        verify = await request_link(client, "email-verifications")
        reset = await request_link(client, "password-resets")
        tokens = [
            await mailed_token(client, daemon, verify, "email_verification"),
            await mailed_token(client, daemon, reset, "password_reset"),
        ]
        await post(client, "/v1/password-resets/check", {"token": tokens[1]})
        await post(client, "/v1/password-resets/confirm", {"token": tokens[1]})
        await post(client, "/v1/password-resets/confirm", {"token": tokens[1]})
        await post(client, "/v1/email-verifications/confirm", {"token": tokens[0]})
        task_bodies = [
            await (await client.get(f"/v1/tasks/{t['task_id']}")).text() for t in (verify, reset)
        ]
        metrics = await (await client.get("/metrics")).text()
    assert any(e["event"] == "audit.password_reset_token_confirmed" for e in logs)
    assert any(e["event"] == "audit.password_reset_token_rejected" for e in logs)
    haystacks = [repr(logs), metrics, *task_bodies]
    for token in tokens:
        for part in (token, token.split(".")[1]):
            assert not any(part in h for h in haystacks)
    assert 'otpd_link_tokens_issued_total{purpose="password_reset"} 1.0' in metrics


async def test_store_holds_only_a_keyed_hash_of_the_token(start: Start, backend: str) -> None:
    daemon, client = await start()
    token = await mailed_token(
        client, daemon, await request_link(client, "password-resets"), "password_reset"
    )
    secret = token.split(".")[1]
    prefix = daemon.config.store.key_prefix
    if backend == "redis":
        from otpd.store.redis import RedisStore

        assert isinstance(daemon.store, RedisStore)
        redis = daemon.store.redis
        dump: list[str] = []
        async for key in redis.scan_iter(match=f"{prefix}*"):
            kind = await redis.type(key)
            if kind == "hash":
                dump.append(repr(await redis.hgetall(key)))
            elif kind == "zset":
                dump.append(repr(await redis.zrange(key, 0, -1)))
            else:
                dump.append(repr(await redis.get(key)) if kind == "string" else str(kind))
            dump.append(str(key))
        stored = "\n".join(dump)
    else:
        stored = repr(daemon.store._data)  # type: ignore[attr-defined]
    assert "token_hash" in stored
    assert secret not in stored
    assert token not in stored
