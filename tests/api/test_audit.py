"""GET /v1/audit: the security events of a user, newest first, with client and masked
recipient, paged by cursor, filtered by event and time, strictly validated; on both
stores. On Redis nothing in the streams is readable: no code, no token, no address."""

from __future__ import annotations

import re
from typing import Any

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock, rfc3339
from otpd.crypto import api_key_digest
from tests.api.helpers import (
    MOBILE,
    Client,
    Start,
    body_of,
    error_of,
    link_in,
    newest_mail,
    token_of,
)
from tests.api.test_at_rest import ADDRESS, digits, dump

KEY = "audit-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
KEYS = {"keys": [{"name": "backend-web", "sha256": api_key_digest(KEY)}]}
IP = "203.0.113.7"
AGENT = "Mozilla/5.0 (audit test)"


async def audit_of(client: Client, **query: str) -> dict[str, Any]:
    resp = await client.get("/v1/audit", params=query, headers=AUTH)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"events", "next_cursor"}
    return body


async def otp_walkthrough(daemon: Otpd, client: Client, **issue: str) -> str:
    """Issue a code for user 42, verify it wrong, then right; returns the code."""
    resp = await client.post(
        "/v1/otp",
        json={
            "user_id": "42",
            "channel": "email",
            "email": ADDRESS,
            "client_ip": IP,
            "user_agent": AGENT,
            **issue,
        },
        headers=AUTH,
    )
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()
    found = re.search(r"\b(\d{6})\b", body_of(newest_mail(daemon.config, "otp_code"), "plain"))
    assert found is not None
    code = found.group(1)
    wrong = "000000" if code != "000000" else "111111"
    for attempt in (wrong, code):
        resp = await client.post(
            "/v1/otp/verify",
            json={"user_id": "42", "code": attempt, "client_ip": IP, "user_agent": AGENT},
            headers=AUTH,
        )
        assert resp.status == 200, await resp.text()
    return code


async def test_an_otp_walkthrough_is_in_the_trail_newest_first(start: Start, backend: str) -> None:
    daemon, client = await start(auth=KEYS)
    await otp_walkthrough(daemon, client)

    body = await audit_of(client, user_id="42")
    events = body["events"]
    assert body["next_cursor"] is None
    names = [e["event"] for e in events]
    assert sorted(names) == ["message_sent", "otp_failed", "otp_issued", "otp_verified"]
    assert names[:2] == ["otp_verified", "otp_failed"]
    assert names.index("otp_issued") > names.index("otp_failed")
    ids = [tuple(int(p) for p in e["id"].split("-")) for e in events]
    assert ids == sorted(ids, reverse=True)
    by_name = {e["event"]: e for e in events}
    for name in ("otp_issued", "otp_failed", "otp_verified", "message_sent"):
        event = by_name[name]
        assert (event["user_id"], event["client_ip"], event["user_agent"]) == ("42", IP, AGENT)
        assert event["api_client"] == "backend-web"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["at"])
    assert by_name["otp_failed"]["reason"] == "invalid_code"
    assert "reason" not in by_name["otp_verified"]
    issued, sent = by_name["otp_issued"], by_name["message_sent"]
    assert issued["recipient"] == sent["recipient"] == "j***@example.com"
    assert issued["otp_id"] == sent["otp_id"] == by_name["otp_verified"]["otp_id"]
    assert sent["task_id"] == issued["task_id"]
    assert (sent["channel"], sent["provider"]) == ("email", "outbox")
    text = repr(events)
    assert ADDRESS not in text and "jane.doe" not in text


async def test_pages_follow_the_cursor_and_filter_by_event(start: Start, backend: str) -> None:
    daemon, client = await start(auth=KEYS)
    await otp_walkthrough(daemon, client)
    everything = (await audit_of(client, user_id="42"))["events"]

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"user_id": "42", "limit": "1"}
        if cursor is not None:
            query["cursor"] = cursor
        body = await audit_of(client, **query)
        seen += body["events"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert cursor == body["events"][-1]["id"]
    assert seen == everything

    failed = (await audit_of(client, user_id="42", event="otp_failed"))["events"]
    assert [e["event"] for e in failed] == ["otp_failed"]
    assert (await audit_of(client, user_id="42", event="link_issued"))["events"] == []


async def test_since_and_until_bound_the_time(start: Start, backend: str, clock: FakeClock) -> None:
    daemon, client = await start(auth=KEYS)
    before = clock.time()
    await otp_walkthrough(daemon, client)
    clock.advance(3600)
    await otp_walkthrough(daemon, client)
    late = (await audit_of(client, user_id="42", since=rfc3339(before + 60)))["events"]
    early = (await audit_of(client, user_id="42", until=rfc3339(before + 60)))["events"]
    assert len(late) == len(early) == 4
    assert {e["at"] for e in late} == {rfc3339(before + 3600)}
    assert {e["at"] for e in early} == {rfc3339(before)}
    offset = (await audit_of(client, user_id="42", since="2027-01-15T09:00:00.5+01:00"))["events"]
    assert offset == late  # 08:00:00.5Z, a second after the FakeClock's start


async def test_records_older_than_the_retention_are_trimmed(
    start: Start, backend: str, clock: FakeClock
) -> None:
    daemon, client = await start(auth=KEYS, audit={"retention_days": 1})
    await otp_walkthrough(daemon, client)
    clock.advance(86400 + 1)
    await otp_walkthrough(daemon, client)
    events = (await audit_of(client, user_id="42"))["events"]
    assert len(events) == 4
    assert {e["at"] for e in events} == {rfc3339(clock.time())}


async def test_a_refused_api_key_is_recorded_without_a_user(start: Start, backend: str) -> None:
    _, client = await start(auth=KEYS)
    resp = await client.get("/v1/tasks/tsk_0", headers={"User-Agent": "scanner/1.0"})
    await error_of(resp, 401, "unauthorized")
    resp = await client.get("/v1/audit", headers={"Authorization": "Bearer wrong-key-xyz"})
    await error_of(resp, 401, "unauthorized")
    events = (await audit_of(client))["events"]
    assert [(e["event"], e["reason"]) for e in events] == [
        ("api_unauthorized", "invalid_key"),
        ("api_unauthorized", "missing_key"),
    ]
    assert events[1]["user_agent"] == "scanner/1.0"
    assert events[1]["client_ip"] == "127.0.0.1"
    assert events[1]["path"] == "/v1/tasks/tsk_0"
    assert "wrong-key-xyz" not in repr(events)
    assert "api_client" not in events[0]


async def test_links_and_a_blocked_sms_are_in_the_trail(start: Start, backend: str) -> None:
    daemon, client = await start(auth=KEYS, sms={"blocked_prefixes": ["+4917"]})
    resp = await client.post(
        "/v1/email-verifications", json={"user_id": "42", "email": ADDRESS}, headers=AUTH
    )
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()
    token = token_of(link_in(newest_mail(daemon.config, "email_verification")))
    for _ in range(2):  # the second time it is used up
        await client.post("/v1/email-verifications/confirm", json={"token": token}, headers=AUTH)
    resp = await client.post(
        "/v1/otp", json={"user_id": "42", "channel": "sms", "phone": MOBILE}, headers=AUTH
    )
    await error_of(resp, 429, "sms_blocked")

    events = (await audit_of(client, user_id="42"))["events"]
    names = [e["event"] for e in events]
    assert names[0] == "sms_blocked"
    assert events[0]["recipient"] == "+4*******4567" and events[0]["reason"] == "blocked_prefix"
    assert names.index("link_confirmed") < names.index("link_issued")
    (issued,) = [e for e in events if e["event"] == "link_issued"]
    assert issued["recipient"] == "j***@example.com" and issued["task_id"].startswith("tsk_")
    unknown = (await audit_of(client))["events"]  # a used-up token names no user
    assert [(e["event"], e["reason"]) for e in unknown] == [("link_invalid", "unknown")]
    assert token not in repr(events + unknown)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"user": "42"}, "user"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-12-02"}, "since"),
        ({"until": "2026-12-02T05:00:00"}, "until"),  # no zone
        ({"until": "2026-13-02T05:00:00Z"}, "until"),
        ({"since": "2026-12-02T06:00:00Z", "until": "2026-12-02T05:00:00Z"}, "until"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "1-2-3"}, "cursor"),
        ({"cursor": "99999999999999999999999-0"}, "cursor"),
        ({"event": "otp_stolen"}, "event"),
        ({"user_id": "bad id with spaces"}, "user_id"),
    ],
)
async def test_a_bad_query_is_a_validation_error(
    start: Start, backend: str, query: dict[str, str], field: str
) -> None:
    _, client = await start(auth=KEYS)
    resp = await client.get("/v1/audit", params=query, headers=AUTH)
    details = await error_of(resp, 422, "validation_error")
    assert field in details["fields"], details


async def test_a_repeated_parameter_is_a_validation_error(start: Start, backend: str) -> None:
    _, client = await start(auth=KEYS)
    resp = await client.get("/v1/audit?user_id=1&user_id=2", headers=AUTH)
    details = await error_of(resp, 422, "validation_error")
    assert "user_id" in details["fields"]


@pytest.mark.parametrize("backend", ["redis"])
async def test_the_audit_streams_at_rest_hold_no_code_token_or_address(
    start: Start, backend: str
) -> None:
    daemon, client = await start(auth=KEYS, sms={"providers": ["console"]})
    code = await otp_walkthrough(daemon, client, channel="both", phone=MOBILE)
    resp = await client.post(
        "/v1/password-resets", json={"user_id": "42", "email": ADDRESS}, headers=AUTH
    )
    assert resp.status == 202, await resp.text()
    await daemon.dispatcher.wait_idle()
    token = token_of(link_in(newest_mail(daemon.config, "password_reset")))
    for path in ("/v1/password-resets/check", "/v1/password-resets/confirm"):
        resp = await client.post(path, json={"token": token}, headers=AUTH)
        assert resp.status == 200, await resp.text()
    events = (await audit_of(client, user_id="42"))["events"]
    assert {"password_reset_confirmed", "link_checked", "link_issued"} <= {
        e["event"] for e in events
    }

    text = await dump(daemon.config.store.redis_url, daemon.config.store.key_prefix)
    streams = [line for line in text.splitlines() if ":audit:" in line]
    assert streams and "otp_verified" in "".join(streams)
    assert "+4*******4567" in text and "j***@example.com" in text
    assert re.search(rf"(?<!\d){code}(?!\d)", text) is None
    for secret in (token, ADDRESS, "jane.doe", MOBILE, digits(MOBILE)):
        assert secret not in text, secret
