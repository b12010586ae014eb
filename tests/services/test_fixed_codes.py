"""``otp.test_recipients``: fixed codes for fixed addresses, nothing sent, nothing counted,
refused in production unless allowed."""

from __future__ import annotations

from typing import Any

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import load_config
from otpd.errors import ConfigError, RateLimitedError
from otpd.models import VerifyReason
from tests.config.test_refusals import production
from tests.conftest import ConfigFactory, outbox_files, wait_idle

REVIEWER = "Reviewer@Example.com"
NUMBER = "+15555550100"  # not a valid mobile number: a test recipient needs none


def fixed(**otp: Any) -> dict[str, Any]:
    return {
        "test_recipients": {REVIEWER: "246810", NUMBER: "246810", "qa@example.com": "135791"},
        "per_user_hour": 2,
        **otp,
    }


async def test_a_test_recipient_gets_its_fixed_code_without_a_message_or_a_limit(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    config = make_config(backend, otp=fixed())
    async with Otpd(config, clock=clock) as daemon:
        for _ in range(5):  # past per_user_hour = 2: no limit is counted
            issued = await daemon.otp.issue(
                user_id="u1", channel="both", email="reviewer@example.com", phone=NUMBER
            )
            assert issued.deliveries == ()
        await wait_idle(daemon)
        assert outbox_files(config, ".eml") == [] and outbox_files(config, ".txt") == []
        wrong = await daemon.otp.verify(user_id="u1", code="000000")
        assert wrong.reason is VerifyReason.INVALID_CODE
        assert (await daemon.otp.verify(user_id="u1", code="246810")).verified
        assert not (await daemon.otp.verify(user_id="u1", code="246810")).verified  # single use
        await daemon.audit.flush()
        records, _ = await daemon.audit.events(user_id="u1", event="otp_issued")
        assert {r.get("test_recipient") for r in records} == {"true"}
        # another user's limit is untouched too: a normal address still counts as before
        for _ in range(2):
            await daemon.otp.issue(user_id="u2", channel="email", email="someone@example.com")
        with pytest.raises(RateLimitedError):
            await daemon.otp.issue(user_id="u2", channel="email", email="someone@example.com")


async def test_a_request_mixing_a_test_recipient_and_a_real_one_is_sent_normally(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    config = make_config("memory", otp=fixed())
    async with Otpd(config, clock=clock) as daemon:
        issued = await daemon.otp.issue(
            user_id="u1", channel="both", email="qa@example.com", phone="+14155550100"
        )
        assert len(issued.deliveries) == 2
        await wait_idle(daemon)
        assert len(outbox_files(config, ".eml")) == 1
        assert not (await daemon.otp.verify(user_id="u1", code="135791")).verified


def test_test_recipients_must_be_addresses_with_codes_of_the_configured_length() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(data={"otp": {"test_recipients": {"nobody": "12", "+1555": "1234567"}}}, env={})
    problems = " ".join(caught.value.problems)
    assert "otp.test_recipients.nobody: must be an email address" in problems
    assert "the code must be 6 digits" in problems


def test_test_recipients_are_refused_in_production_unless_allowed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(data=production(otp={"test_recipients": {REVIEWER: "246810"}}), env={})
    assert "otp.test_recipients" in str(caught.value)
    assert any(
        p.startswith("otp.test_recipients: refused in production") for p in caught.value.problems
    )
    allowed = production(
        otp={"test_recipients": {REVIEWER: "246810"}, "allow_test_recipients_in_production": True},
        metrics={"token": "m" * 32},
    )
    assert load_config(data=allowed, env={}).otp.fixed_codes() == {"reviewer@example.com": "246810"}
