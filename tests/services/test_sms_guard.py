"""The SMS pumping fraud and cost guard: each rule at its boundary, on both stores."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from otpd.api.routes import OTPD
from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import Config, SmsConfig
from otpd.errors import RateLimitedError, SmsBlockedError, ValidationError
from otpd.metrics import Metrics
from otpd.redaction import mask_phone
from otpd.services.sms_guard import SmsGuard
from otpd.store import Store
from tests.conftest import ConfigFactory, open_client, outbox_files, wait_idle
from tests.services.helpers import service_deps

US = "+14155552671"
GB = "+447911234567"
DE = "+4915123456789"
HOUR = 3600
DAY = 86400

# Every rule off or out of reach, so a test turns on only the rule it proves.
QUIET: dict[str, Any] = {
    "global_hour": 10_000,
    "global_day": 10_000,
    "country_hour": 10_000,
    "country_day": 10_000,
    "prefix_max_numbers": 10_000,
}

GuardFactory = Callable[..., SmsGuard]


def us_range(n: int) -> list[str]:
    """``n`` different US numbers sharing the 8-digit range ``14155552``."""
    return [f"+141555526{i:02d}" for i in range(n)]


def blocked(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("otpd_sms_blocked_total", {"reason": reason})
    return value or 0.0


def seconds_to_utc_midnight(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC).date()
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
    return midnight.timestamp() - now


@pytest.fixture
def make_guard(store: Store, clock: FakeClock) -> GuardFactory:
    """``make_guard(global_hour=3)``: a guard on the parametrized store, other rules quiet."""

    def factory(**sms: Any) -> SmsGuard:
        config = Config(sms=SmsConfig(**{**QUIET, **sms}))
        return SmsGuard(config.sms, service_deps(config, store, clock))

    return factory


def test_test_numbers_are_valid_mobile_capable_numbers_of_their_country() -> None:
    for number, region in ((US, "US"), (GB, "GB"), (DE, "DE"), *((n, "US") for n in us_range(12))):
        parsed = phonenumbers.parse(number, None)
        assert phonenumbers.is_valid_number(parsed), number
        assert phonenumbers.region_code_for_number(parsed) == region, number


# ---------------------------------------------------------------- static rules


async def test_country_outside_allowed_countries_is_a_422_on_phone(
    make_guard: GuardFactory,
) -> None:
    guard = make_guard(allowed_countries=("GB", "DE"))
    await guard.admit(GB)
    await guard.admit(DE)
    with pytest.raises(ValidationError) as info:
        await guard.admit(US)
    assert info.value.status == 422
    assert info.value.fields == {"phone": "SMS to US is not allowed"}
    assert blocked(guard.metrics, "country_not_allowed") == 1


async def test_empty_allowed_countries_allows_every_country(make_guard: GuardFactory) -> None:
    guard = make_guard()
    for number in (US, GB, DE):
        await guard.admit(number)


async def test_blocked_prefix_is_refused_and_counts_nothing(make_guard: GuardFactory) -> None:
    guard = make_guard(blocked_prefixes=("+4479", "+882"), global_hour=1)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(GB)
    assert info.value.reason == "blocked_prefix"
    assert info.value.status == 429
    assert blocked(guard.metrics, "blocked_prefix") == 1
    # the refused SMS took nothing from the global cap of one
    await guard.admit("+447400123456")


# ---------------------------------------------------------------- caps


@pytest.mark.parametrize(
    ("key", "reason", "window"),
    [
        ("country_hour", "country_hourly_cap", HOUR),
        ("country_day", "country_daily_cap", DAY),
        ("global_hour", "global_hourly_cap", HOUR),
        ("global_day", "global_daily_cap", DAY),
    ],
)
async def test_cap_allows_n_refuses_n_plus_one_until_the_window_slides(
    make_guard: GuardFactory, clock: FakeClock, key: str, reason: str, window: int
) -> None:
    guard = make_guard(**{key: 3})
    numbers = us_range(4)
    for number in numbers[:3]:
        await guard.admit(number)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(numbers[3])
    assert info.value.reason == reason
    assert info.value.retry_after == window
    assert blocked(guard.metrics, reason) == 1

    clock.advance(window - 1)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(numbers[3])
    assert info.value.retry_after == 1

    clock.advance(1)
    await guard.admit(numbers[3])


async def test_country_caps_count_each_country_apart(make_guard: GuardFactory) -> None:
    guard = make_guard(country_hour=1)
    await guard.admit(US)
    await guard.admit(GB)
    await guard.admit(DE)
    with pytest.raises(SmsBlockedError, match="too many SMS"):
        await guard.admit(US)


async def test_global_caps_count_every_country_together(make_guard: GuardFactory) -> None:
    guard = make_guard(global_hour=2)
    await guard.admit(US)
    await guard.admit(GB)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(DE)
    assert info.value.reason == "global_hourly_cap"


async def test_caps_count_sms_not_numbers(make_guard: GuardFactory) -> None:
    guard = make_guard(global_hour=2)
    await guard.admit(US)
    await guard.admit(US)
    with pytest.raises(SmsBlockedError):
        await guard.admit(US)


async def test_a_cap_that_refuses_counts_nothing_on_the_other_caps(
    make_guard: GuardFactory,
) -> None:
    guard = make_guard(country_hour=1, global_hour=2)
    await guard.admit(US)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(US)
    assert info.value.reason == "country_hourly_cap"
    # had the refused SMS counted globally, this one would be the third
    await guard.admit(GB)


# ---------------------------------------------------------------- prefix velocity


async def test_prefix_velocity_refuses_the_eleventh_different_number_of_a_range(
    make_guard: GuardFactory, clock: FakeClock
) -> None:
    guard = make_guard(prefix_max_numbers=10, prefix_window_seconds=600)
    first_ten, eleventh = us_range(10), us_range(11)[10]
    for number in first_ten:
        await guard.admit(number)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(eleventh)
    assert info.value.reason == "prefix_velocity"
    assert info.value.retry_after == 600
    assert blocked(guard.metrics, "prefix_velocity") == 1

    clock.advance(600)
    await guard.admit(eleventh)


async def test_prefix_velocity_does_not_count_a_number_seen_again(
    make_guard: GuardFactory,
) -> None:
    guard = make_guard(prefix_max_numbers=10)
    first_ten = us_range(10)
    for _ in range(3):
        for number in first_ten:
            await guard.admit(number)
    assert blocked(guard.metrics, "prefix_velocity") == 0


async def test_prefix_velocity_counts_each_range_apart(make_guard: GuardFactory) -> None:
    guard = make_guard(prefix_max_numbers=2, prefix_digits=8)
    for number in us_range(2):
        await guard.admit(number)
    # +1415555 2xxx is full; +1202555 0xxx, +44..., +49... are other ranges
    for number in ("+12025550123", GB, DE):
        await guard.admit(number)
    with pytest.raises(SmsBlockedError):
        await guard.admit(us_range(3)[2])


async def test_prefix_velocity_refusal_counts_nothing_on_the_caps(
    make_guard: GuardFactory,
) -> None:
    guard = make_guard(prefix_max_numbers=1, global_hour=2)
    first, second = us_range(2)
    await guard.admit(first)
    for _ in range(3):
        with pytest.raises(SmsBlockedError):
            await guard.admit(second)
    await guard.admit(GB)


# ---------------------------------------------------------------- daily budget


async def test_budget_charges_country_price_or_default_and_refuses_beyond_it(
    make_guard: GuardFactory,
) -> None:
    # 3 x 0.30 (GB) + 1 x 0.10 (default) is exactly 1.00: allowed; one more is not.
    guard = make_guard(daily_budget=1.0, prices={"GB": 0.30}, default_price=0.10)
    for _ in range(3):
        await guard.admit(GB)
    await guard.admit(US)
    spend = guard.metrics.registry.get_sample_value("otpd_sms_spend_today")
    assert spend == pytest.approx(1.0)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(DE)
    assert info.value.reason == "daily_budget"
    assert blocked(guard.metrics, "daily_budget") == 1


async def test_budget_refusal_retries_after_next_utc_midnight_when_spend_resets(
    make_guard: GuardFactory, clock: FakeClock
) -> None:
    guard = make_guard(daily_budget=0.10, default_price=0.05)
    await guard.admit(US)
    await guard.admit(US)
    with pytest.raises(SmsBlockedError) as info:
        await guard.admit(US)
    wait = seconds_to_utc_midnight(clock.time())
    assert info.value.retry_after == math.ceil(wait)

    clock.advance(wait - 1)
    with pytest.raises(SmsBlockedError):
        await guard.admit(US)
    clock.advance(1)
    await guard.admit(US)
    spend = guard.metrics.registry.get_sample_value("otpd_sms_spend_today")
    assert spend == pytest.approx(0.05)


async def test_budget_zero_means_no_budget(make_guard: GuardFactory) -> None:
    guard = make_guard(daily_budget=0.0, default_price=1000.0)
    for _ in range(25):
        await guard.admit(US)
    assert blocked(guard.metrics, "daily_budget") == 0


async def test_budget_refusal_logs_one_warning_with_the_number_masked(
    make_guard: GuardFactory,
) -> None:
    guard = make_guard(daily_budget=0.05, default_price=0.05)
    await guard.admit(DE)
    with capture_logs() as logs, pytest.raises(SmsBlockedError):
        await guard.admit(DE)
    events = [e for e in logs if e["event"] == "sms.budget_exhausted"]
    assert len(events) == 1
    assert events[0]["log_level"] == "warning"
    assert events[0]["to"] == mask_phone(DE)
    assert events[0]["country"] == "DE"
    assert DE[1:] not in repr(logs)


# ---------------------------------------------------------------- through the daemon


@asynccontextmanager
async def sms_daemon(
    make_config: ConfigFactory, backend: str, clock: FakeClock, **sms: Any
) -> AsyncIterator[tuple[Otpd, TestClient[Any, Any]]]:
    async with Otpd(make_config(backend, sms=sms), clock=clock) as daemon:
        client = await open_client(daemon)
        try:
            yield daemon, client
        finally:
            await client.close()


async def post_otp(client: TestClient[Any, Any], **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/otp", json={"user_id": "u1", **body})
    data: dict[str, Any] = await resp.json()
    return resp.status, data


async def wait_sent(client: TestClient[Any, Any], task_id: str) -> None:
    await wait_idle(client.app[OTPD])
    resp = await client.get(f"/v1/tasks/{task_id}")
    assert (await resp.json())["status"] == "sent"


async def test_http_sms_to_a_country_not_allowed_answers_422_on_phone(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with sms_daemon(make_config, backend, clock, allowed_countries=["GB"]) as (_, client):
        status, data = await post_otp(client, channel="sms", phone=US)
    assert status == 422
    assert data["error"]["code"] == "validation_error"
    assert data["error"]["details"]["fields"] == {"phone": "SMS to US is not allowed"}


async def test_http_refused_sms_answers_429_sms_blocked_and_writes_nothing(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with sms_daemon(make_config, backend, clock, blocked_prefixes=["+1415"]) as (
        daemon,
        client,
    ):
        resp = await client.post("/v1/otp", json={"user_id": "u1", "channel": "sms", "phone": US})
        data = await resp.json()
        assert resp.status == 429
        assert data["error"]["code"] == "sms_blocked"
        assert data["error"]["details"]["reason"] == "blocked_prefix"
        assert resp.headers["Retry-After"] == str(data["error"]["details"]["retry_after"])
        assert blocked(daemon.metrics, "blocked_prefix") == 1
        assert daemon.dispatcher.depth == 0
    assert outbox_files(daemon.config, "") == []


async def test_http_email_still_works_while_sms_budget_is_spent(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with sms_daemon(make_config, backend, clock, daily_budget=0.05) as (daemon, client):
        status, data = await post_otp(client, channel="sms", phone=US)
        assert status == 202
        await wait_sent(client, data["deliveries"][0]["task_id"])
        status, data = await post_otp(client, channel="sms", phone=US)
        assert status == 429
        assert data["error"]["details"]["reason"] == "daily_budget"
        status, _ = await post_otp(client, channel="both", email="a@example.com", phone=US)
        assert status == 429

        status, data = await post_otp(client, channel="email", email="a@example.com")
        assert status == 202
        await wait_sent(client, data["deliveries"][0]["task_id"])
        assert len(outbox_files(daemon.config, ".eml")) == 1
        assert len(outbox_files(daemon.config, ".txt")) == 1
        assert blocked(daemon.metrics, "daily_budget") == 2


async def test_user_limit_refusal_does_not_use_up_the_sms_caps(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    config = make_config(backend, sms={"global_hour": 2}, otp={"per_user_hour": 1})
    async with Otpd(config, clock=clock) as daemon:
        await daemon.otp.issue(user_id="u1", channel="sms", phone=US)
        for _ in range(3):
            with pytest.raises(RateLimitedError) as info:
                await daemon.otp.issue(user_id="u1", channel="sms", phone=US)
            assert info.value.scope == "user_hour"
        await daemon.otp.issue(user_id="u2", channel="sms", phone=GB)
        with pytest.raises(SmsBlockedError):
            await daemon.otp.issue(user_id="u3", channel="sms", phone=DE)
