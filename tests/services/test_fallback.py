"""Channel fallback: a code whose first channel fails goes out once on the other one, with
the same code, expiry and attempts; never late, never after it was verified, never around
the SMS pumping guard."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.errors import NotFoundError, RecipientSuppressedError, ValidationError
from otpd.models import Channel, OtpIssued, TaskStatus, VerifyReason
from otpd.webhooks.events import DeliveryEvent, DeliveryOutcome
from tests.conftest import ConfigFactory, free_port, outbox_files, wait_idle
from tests.services.test_otp import code_from_email, code_from_sms

PHONE = "+14155552671"
EMAIL = "ada@example.com"


def failing_sms() -> dict[str, Any]:
    """Every SMS provider of the chain fails: both point at a port nobody listens on."""
    dead = f"http://127.0.0.1:{free_port()}"
    return {
        "sms": {"providers": ["twilio", "vonage"]},
        "twilio": {
            "account_sid": "AC" + "0" * 32,
            "auth_token": "token",
            "from_number": "+14155550000",
            "base_url": dead,
        },
        "vonage": {"api_key": "key", "api_secret": "secret", "base_url": dead},
        "dispatch": {"max_attempts": 2},
    }


def failing_email() -> dict[str, Any]:
    return {
        "email": {"providers": ["smtp"]},
        "smtp": {"host": "127.0.0.1", "port": free_port(), "timeout_seconds": 1.0},
        "dispatch": {"max_attempts": 1},
    }


async def statuses(daemon: Otpd, issued: OtpIssued) -> list[tuple[str, str, bool]]:
    status = await daemon.otp.status(issued.otp_id)
    return [(d.channel.value, d.status, d.fallback) for d in status.deliveries]


async def test_an_sms_code_whose_every_provider_fails_goes_out_by_email_and_verifies(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    config = make_config(backend, **failing_sms())
    async with Otpd(config, clock=clock) as daemon:
        issued = await daemon.otp.issue(
            user_id="u1", channel="sms", phone=PHONE, email=EMAIL, fallback="email"
        )
        assert [d.channel for d in issued.deliveries] == [Channel.SMS]
        await wait_idle(daemon)
        await wait_idle(daemon)  # the fallback is queued as the first task fails
        assert await statuses(daemon, issued) == [
            ("sms", "failed", False),
            ("email", "sent", True),
        ]
        status = await daemon.otp.status(issued.otp_id)
        assert status.status == "pending" and status.expires_at == issued.expires_at
        [mail] = outbox_files(config, ".eml")
        code = code_from_email(mail)
        assert (await daemon.otp.verify(user_id="u1", code=code)).verified
        assert (await daemon.otp.status(issued.otp_id)).status == "verified"
        records, _ = await daemon.audit.events(user_id="u1", event="otp_fallback")
        assert [(r["channel"], r["failed_task_id"]) for r in records] == [
            ("email", issued.deliveries[0].task_id)
        ]
        assert EMAIL not in repr(records)


async def test_the_fallback_carries_the_same_code_and_its_attempts(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    config = make_config("memory", **failing_email())
    async with Otpd(config, clock=clock) as daemon:
        issued = await daemon.otp.issue(
            user_id="u1", channel="email", email=EMAIL, phone=PHONE, fallback="sms"
        )
        assert (await daemon.otp.verify(user_id="u1", code="000000")).attempts_left == 2
        await wait_idle(daemon)
        await wait_idle(daemon)
        assert await statuses(daemon, issued) == [
            ("email", "failed", False),
            ("sms", "sent", True),
        ]
        [sms] = outbox_files(config, ".txt")
        wrong = await daemon.otp.verify(user_id="u1", code="000001")
        assert wrong.reason is VerifyReason.INVALID_CODE and wrong.attempts_left == 1
        assert (await daemon.otp.verify(user_id="u1", code=code_from_sms(sms))).verified


async def bounce(daemon: Otpd, task_id: str, *, repeat: bool = False) -> None:
    """The provider (Mailgun) accepted the task's message, then reported it bounced."""
    if not repeat:
        record = await daemon.store.get_task(task_id)
        assert record is not None and record.status is TaskStatus.SENT
        record = dataclasses.replace(record, provider="mailgun", provider_message_id="<m@mg>")
        await daemon.store.update_task(record)
        await daemon.deliveries.linked(record)
    event = DeliveryEvent(
        provider="mailgun",
        message_id="<m@mg>",
        event_id=f"ev-{task_id}",
        outcome=DeliveryOutcome.BOUNCED,
        occurred_at=daemon.clock.time(),
        reason="550 5.1.1",
    )
    await daemon.deliveries.apply([event])


async def test_a_reported_bounce_in_time_sends_the_fallback_once(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    config = make_config(backend)
    async with Otpd(config, clock=clock) as daemon:
        issued = await daemon.otp.issue(
            user_id="u1", channel="email", email=EMAIL, phone=PHONE, fallback="sms"
        )
        await wait_idle(daemon)
        clock.advance(29)
        await bounce(daemon, issued.deliveries[0].task_id)
        await bounce(daemon, issued.deliveries[0].task_id, repeat=True)  # changes nothing
        await wait_idle(daemon)
        assert await statuses(daemon, issued) == [
            ("email", "bounced", False),
            ("sms", "sent", True),
        ]
        assert len(outbox_files(config, ".txt")) == 1


async def test_no_fallback_after_the_window_or_once_verified(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    config = make_config("memory", otp={"fallback_after_seconds": 30})
    async with Otpd(config, clock=clock) as daemon:
        late = await daemon.otp.issue(
            user_id="u1", channel="email", email=EMAIL, phone=PHONE, fallback="sms"
        )
        await wait_idle(daemon)
        clock.advance(31)
        await bounce(daemon, late.deliveries[0].task_id)

        verified = await daemon.otp.issue(
            user_id="u2", channel="email", email="bob@example.com", phone=PHONE, fallback="sms"
        )
        await wait_idle(daemon)
        mails = [p for p in outbox_files(config, ".eml") if "bob" in p.read_text()]
        assert (await daemon.otp.verify(user_id="u2", code=code_from_email(mails[0]))).verified
        await bounce(daemon, verified.deliveries[0].task_id)
        await wait_idle(daemon)
        assert outbox_files(config, ".txt") == []
        assert await statuses(daemon, late) == [("email", "bounced", False)]
        assert await statuses(daemon, verified) == [("email", "bounced", False)]
        assert (await daemon.otp.status(late.otp_id)).status == "pending"
        clock.advance(600)
        assert (await daemon.otp.status(late.otp_id)).status == "expired"


async def test_a_fallback_sms_is_counted_by_the_pumping_guard_when_sent(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    # one SMS a day is all the budget allows: the second fallback SMS is refused
    config = make_config(
        "memory", sms={"daily_budget": 0.05, "default_price": 0.05}, **failing_email()
    )
    async with Otpd(config, clock=clock) as daemon:
        first = await daemon.otp.issue(
            user_id="u1", channel="email", email=EMAIL, phone=PHONE, fallback="sms"
        )
        await wait_idle(daemon)
        await wait_idle(daemon)
        second = await daemon.otp.issue(
            user_id="u2", channel="email", email=EMAIL, phone="+14155552672", fallback="sms"
        )
        await wait_idle(daemon)
        await wait_idle(daemon)
        assert await statuses(daemon, first) == [("email", "failed", False), ("sms", "sent", True)]
        assert await statuses(daemon, second) == [
            ("email", "failed", False),
            ("sms", "failed", True),
        ]
        refused = await daemon.store.get_task(
            (await daemon.otp.status(second.otp_id)).deliveries[1].task_id
        )
        assert refused is not None and refused.last_error.startswith("sms_blocked: daily_budget")
        assert len(outbox_files(config, ".txt")) == 1


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"channel": "sms", "phone": PHONE, "email": EMAIL, "fallback": "sms"}, "fallback"),
        ({"channel": "both", "phone": PHONE, "email": EMAIL, "fallback": "email"}, "fallback"),
        ({"channel": "sms", "phone": PHONE, "email": EMAIL, "fallback": "fax"}, "fallback"),
        ({"channel": "sms", "phone": PHONE, "fallback": "email"}, "email"),
        ({"channel": "email", "email": EMAIL, "fallback": "sms"}, "phone"),
    ],
)
async def test_a_fallback_must_be_the_other_channel_with_its_address(
    otpd: Otpd, request_fields: dict[str, str], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        await otpd.otp.issue(user_id="u1", **request_fields)
    assert field in caught.value.details.get("fields", {})


async def test_a_suppressed_fallback_address_is_refused_up_front(otpd: Otpd) -> None:
    await otpd.suppressions.add(EMAIL, "bounce")
    with pytest.raises(RecipientSuppressedError):
        await otpd.otp.issue(
            user_id="u1", channel="sms", phone=PHONE, email=EMAIL, fallback="email"
        )
    await wait_idle(otpd)
    assert outbox_files(otpd.config, ".txt") == []


async def test_only_codes_issued_with_a_fallback_have_a_trail(otpd: Otpd) -> None:
    plain = await otpd.otp.issue(user_id="u1", channel="email", email=EMAIL)
    for otp_id in (plain.otp_id, "otp_unknown", "verify", "otp_" + "x" * 100):
        with pytest.raises(NotFoundError):
            await otpd.otp.status(otp_id)


async def test_the_fallback_code_is_sealed_at_rest(
    make_config: ConfigFactory, clock: FakeClock, redis_url: str
) -> None:
    config = make_config("redis")
    async with Otpd(config, clock=clock) as daemon:
        issued = await daemon.otp.issue(
            user_id="u1", channel="email", email=EMAIL, phone=PHONE, fallback="sms"
        )
        await wait_idle(daemon)
        [mail] = outbox_files(config, ".eml")
        code = code_from_email(mail)
        from otpd.store.redis import RedisStore

        assert isinstance(daemon.store, RedisStore)
        raw = await daemon.store.redis.hgetall(daemon.store.layout.trail(issued.otp_id))
        dump = repr(raw)
        assert raw and code not in dump and PHONE not in dump and PHONE[1:] not in dump
