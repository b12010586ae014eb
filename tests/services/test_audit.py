"""The audit trail: one record per security event, in the store and in its log line, with
recipients masked and secrets dropped; a store that fails never fails the caller."""

from __future__ import annotations

import json

import pytest
import structlog

from otpd.app import Otpd
from otpd.clock import FakeClock, rfc3339
from otpd.config import AuditConfig
from otpd.errors import UnavailableError, ValidationError
from otpd.models import Channel, Message
from otpd.services.audit import AuditTrail, parse_rfc3339
from otpd.store import Store
from otpd.store.memory import MemoryStore
from tests.conftest import ConfigFactory, free_port


class FlakyStore(MemoryStore):
    """A memory store whose audit writes fail while ``down``."""

    down = False

    async def append_audit(
        self, record: dict[str, str], user_id: str | None, retention_ms: int, now: float
    ) -> str:
        if self.down:
            raise UnavailableError("the store is unavailable")
        return await super().append_audit(record, user_id, retention_ms, now)


async def test_a_record_is_stored_and_logged_alike_with_the_recipient_masked(
    store: Store, clock: FakeClock
) -> None:
    trail = AuditTrail(AuditConfig(), store, clock=clock)
    structlog.contextvars.bind_contextvars(client="web")
    try:
        with structlog.testing.capture_logs() as logs:
            await trail.record(
                "otp_issued",
                user_id="42",
                otp_id="otp_1",
                recipient=["jane.doe@example.com", "+15005552671"],
                client_ip="203.0.113.7",
                code="123456",  # a secret is never kept, whoever passes it
                token="tok-secret",
                task_id=["tsk_a", "tsk_b"],
                attempts_left=2,
                user_agent=None,
            )
    finally:
        structlog.contextvars.unbind_contextvars("client")
    (event,), cursor = await store.audit_events("42", None, None, None, 10, None)
    assert cursor is None
    assert event == {
        "id": event["id"],
        "event": "otp_issued",
        "at": rfc3339(clock.time()),
        "api_client": "web",
        "recipient": "j***@example.com, +1******2671",
        "user_id": "42",
        "otp_id": "otp_1",
        "client_ip": "203.0.113.7",
        "task_id": "tsk_a,tsk_b",
        "attempts_left": "2",
    }
    (line,) = [e for e in logs if e["event"].startswith("audit.")]
    assert line["event"] == "audit.otp_issued"
    assert line["recipient"] == event["recipient"]
    assert "code" not in line and "token" not in line
    assert "123456" not in repr(logs) and "jane.doe" not in repr(logs)


async def test_the_log_line_keeps_its_old_name(store: Store, clock: FakeClock) -> None:
    trail = AuditTrail(AuditConfig(), store, clock=clock)
    with structlog.testing.capture_logs() as logs:
        await trail.record("otp_failed", log_as="otp_rejected", user_id="7", reason="invalid_code")
    assert [e["event"] for e in logs] == ["audit.otp_rejected"]
    (event,), _ = await store.audit_events("7", "otp_failed", None, None, 10, None)
    assert event["reason"] == "invalid_code"


async def test_a_failing_store_never_fails_the_caller_and_warns_once(clock: FakeClock) -> None:
    store = FlakyStore(clock=clock)
    trail = AuditTrail(AuditConfig(), store, clock=clock)
    store.down = True
    with structlog.testing.capture_logs() as logs:
        for n in range(3):
            await trail.record("otp_failed", user_id="42", otp_id=f"otp_{n}")
        store.down = False
        await trail.record("otp_verified", user_id="42")
    # every record is in the log, the outage is reported once, then its end
    assert [e["event"] for e in logs] == [
        "audit.otp_failed",
        "audit.store_failed",
        "audit.otp_failed",
        "audit.otp_failed",
        "audit.otp_verified",
        "audit.store_restored",
    ]
    assert logs[1]["log_level"] == "warning" and logs[1]["error"] == "UnavailableError"
    assert logs[-1]["only_logged"] == 3
    events, _ = await store.audit_events("42", None, None, None, 10, None)
    assert [e["event"] for e in events] == ["otp_verified"]


async def test_a_disabled_trail_only_logs(store: Store, clock: FakeClock) -> None:
    trail = AuditTrail(AuditConfig(enabled=False), store, clock=clock)
    with structlog.testing.capture_logs() as logs:
        await trail.record("otp_issued", user_id="42")
    assert [e["event"] for e in logs] == ["audit.otp_issued"]
    assert await store.audit_events("42", None, None, None, 10, None) == ([], None)


async def test_records_past_the_retention_are_trimmed(store: Store, clock: FakeClock) -> None:
    trail = AuditTrail(AuditConfig(retention_days=90), store, clock=clock)
    await trail.record("otp_issued", user_id="42")
    clock.advance(89 * 86400)
    await trail.record("otp_failed", user_id="42")
    clock.advance(1 * 86400 + 1)
    await trail.record("otp_verified", user_id="42")
    events, _ = await trail.events(user_id="42")
    assert [e["event"] for e in events] == ["otp_verified", "otp_failed"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"event": "nope"}, "event"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "1-x"}, "cursor"),
        ({"since": "2026-12-02 05:00:00Z"}, "since"),
        ({"since": "2026-12-02T05:00:00Z", "until": "2026-12-02T04:59:59Z"}, "until"),
        ({"user_id": ""}, "user_id"),
    ],
)
async def test_a_bad_query_names_its_field(
    kwargs: dict[str, object], field: str, clock: FakeClock
) -> None:
    trail = AuditTrail(AuditConfig(), MemoryStore(clock=clock), clock=clock)
    with pytest.raises(ValidationError) as info:
        await trail.events(**kwargs)  # type: ignore[arg-type]
    assert field in info.value.fields


def test_rfc3339_times_with_a_zone_parse() -> None:
    assert parse_rfc3339("2027-01-15T08:00:00Z", "since") == 1_800_000_000
    assert parse_rfc3339("2027-01-15t09:00:00.250+01:00", "since") == 1_800_000_000.25


def test_a_message_carries_its_audit_context_through_the_queue() -> None:
    message = Message(
        Channel.SMS, "+15005552671", "Your code", audit=(("user_id", "42"), ("otp_id", "o"))
    )
    assert Message.from_json(message.to_json()) == message
    # a message sealed before the audit trail existed still opens
    old = json.loads(message.to_json())[:9]
    assert Message.from_json(json.dumps(old).encode()).audit == ()


async def test_a_failed_delivery_is_recorded_without_the_providers_words(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    config = make_config(
        email={"providers": ["smtp"]},
        smtp={"host": "127.0.0.1", "port": free_port(), "tls": "none", "timeout_seconds": 0.5},
        dispatch={"max_attempts": 1},
    )
    async with Otpd(config, clock=clock) as daemon:
        await daemon.otp.issue(
            user_id="42", channel="email", email="jane.doe@example.com", client_ip="198.51.100.4"
        )
        await daemon.dispatcher.wait_idle()
        (failed,), _ = await daemon.audit.events(user_id="42", event="message_failed")
    assert failed["recipient"] == "j***@example.com"
    assert (failed["user_id"], failed["client_ip"], failed["channel"]) == (
        "42",
        "198.51.100.4",
        "email",
    )
    assert failed["reason"] and ":" not in failed["reason"] and "@" not in failed["reason"]


async def test_an_open_trail_answers_before_the_store_write_and_keeps_every_record_on_close(
    clock: FakeClock,
) -> None:
    store = MemoryStore(clock=clock)
    async with store:
        async with AuditTrail(AuditConfig(), store, clock=clock) as trail:
            for n in range(300):  # more than one batch
                await trail.record("otp_failed", user_id="7", otp_id=f"otp_{n}")
            # answered: the records wait for the writer, which has not run yet
            assert (await store.audit_events("7", None, None, None, 1000, None))[0] == []
            await trail.record("otp_verified", user_id="7")
        # closing wrote what was left, in order
        events, _ = await store.audit_events("7", None, None, None, 1000, None)
    assert len(events) == 301
    assert events[0]["event"] == "otp_verified"
    assert [e["otp_id"] for e in events[1:]] == [f"otp_{n}" for n in reversed(range(300))]


async def test_reading_the_trail_first_writes_what_this_process_recorded(
    store: Store, clock: FakeClock
) -> None:
    async with AuditTrail(AuditConfig(), store, clock=clock) as trail:
        await trail.record("otp_issued", user_id="8")
        events, _ = await trail.events(user_id="8")
    assert [e["event"] for e in events] == ["otp_issued"]
