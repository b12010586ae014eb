"""SMS conversion per number range: a range whose codes are not verified is blocked, one
whose codes are verified is not; on both stores, through the daemon."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.errors import NotFoundError, RateLimitedError, SmsBlockedError, ValidationError
from otpd.store.redis import RedisStore
from tests.conftest import ConfigFactory, outbox_files, wait_idle
from tests.services.test_sms_guard import blocked

WINDOW = 3600
BLOCK = 43200
RANGE = "+14155552"  # the 8-digit range of every number below
OTHER = "+14155553"

# Every other rule out of reach: only conversion refuses.
LOUD: dict[str, Any] = {
    "global_hour": 10_000,
    "global_day": 10_000,
    "country_hour": 10_000,
    "country_day": 10_000,
    "prefix_max_numbers": 10_000,
}


def number(n: int, prefix: str = RANGE) -> str:
    return f"{prefix}{600 + n:03d}"


def user(n: int, prefix: str = RANGE) -> str:
    """The user of the ``n``-th number (a name without the range's digits)."""
    return f"user-{prefix[-1]}-{n}"


@asynccontextmanager
async def daemon_with(
    make_config: ConfigFactory, backend: str, clock: FakeClock, **sms: Any
) -> AsyncIterator[Otpd]:
    async with Otpd(make_config(backend, sms={**LOUD, **sms}), clock=clock) as daemon:
        yield daemon


async def issue(daemon: Otpd, n: int, prefix: str = RANGE) -> None:
    """One SMS code to the ``n``-th number of the range, for its own user."""
    await daemon.otp.issue(user_id=user(n, prefix), channel="sms", phone=number(n, prefix))


async def issue_and_read(daemon: Otpd, n: int) -> str:
    """Issue a code as :func:`issue` does and read it back from the outbox."""
    await wait_idle(daemon)
    before = set(outbox_files(daemon.config, ".txt"))
    await issue(daemon, n)
    await wait_idle(daemon)
    [sent] = set(outbox_files(daemon.config, ".txt")) - before
    match = re.search(r"\b(\d{6}) is your", Path(sent).read_text())
    assert match is not None
    return match.group(1)


async def refused(daemon: Otpd, n: int, prefix: str = RANGE) -> SmsBlockedError:
    with pytest.raises(SmsBlockedError) as info:
        await issue(daemon, n, prefix)
    return info.value


async def test_range_with_30_unverified_codes_is_blocked_and_listed(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock, conversion_min_samples=30) as daemon:
        for n in range(30):
            await issue(daemon, n)
        error = await refused(daemon, 30)
        assert error.reason == "low_conversion"
        assert error.retry_after == BLOCK
        assert blocked(daemon.metrics, "low_conversion") == 1
        [shown] = await daemon.sms_guard.blocks()
        assert shown.prefix == RANGE
        assert (shown.block.reason, shown.block.sent, shown.block.verified) == (
            "low_conversion",
            30,
            0,
        )
        assert shown.block.expires_at == clock.time() + BLOCK
        # a number the range never saw is refused too: the whole range is blocked
        assert (await refused(daemon, 99)).reason == "low_conversion"
        assert blocked(daemon.metrics, "low_conversion") == 2
        await wait_idle(daemon)
        [event] = (await daemon.audit.events(event="sms_range_blocked"))[0]
        assert (event["sent"], event["verified"], event["reason"]) == ("30", "0", "low_conversion")
        [refusal], _ = await daemon.audit.events(user_id=user(30), event="sms_blocked")
        assert refusal["reason"] == "low_conversion"


async def test_default_min_samples_blocks_the_21st_unverified_code(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(20):
            await issue(daemon, n)
        await refused(daemon, 20)


async def test_range_whose_codes_are_verified_is_never_blocked(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(40):
            if n % 4 == 0:  # 25 % verified, above min_conversion at every step
                code = await issue_and_read(daemon, n)
                result = await daemon.otp.verify(user_id=user(n), code=code)
                assert result.verified
            else:
                await issue(daemon, n)
        await issue(daemon, 40)
        assert await daemon.sms_guard.blocks() == []
        assert blocked(daemon.metrics, "low_conversion") == 0


async def test_wrong_codes_are_no_conversion(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(20):
            await issue(daemon, n)
            assert not (await daemon.otp.verify(user_id=user(n), code="000000")).verified
        await refused(daemon, 20)


async def test_a_block_leaves_other_ranges_alone(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(20):
            await issue(daemon, n)
        await refused(daemon, 20)
        await issue(daemon, 0, OTHER)
        await daemon.otp.issue(user_id="mail", channel="email", email="ada@example.com")
        assert [s.prefix for s in await daemon.sms_guard.blocks()] == [RANGE]


async def test_block_ends_after_auto_block_seconds(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(20):
            await issue(daemon, n)
        await refused(daemon, 20)
        clock.advance(BLOCK - 1)
        assert (await refused(daemon, 21)).retry_after == 1
        clock.advance(1)
        assert await daemon.sms_guard.blocks() == []
        await issue(daemon, 21)


async def test_lifting_a_block_lets_the_range_start_afresh(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(20):
            await issue(daemon, n)
        await refused(daemon, 20)
        await daemon.sms_guard.lift(RANGE)
        assert await daemon.sms_guard.blocks() == []
        # the samples that decided the block are gone with it
        for n in range(20):
            await issue(daemon, n + 20)
        await refused(daemon, 40)
        await wait_idle(daemon)
        lifted, _ = await daemon.audit.events(event="sms_block_lifted")
        assert len(lifted) == 1


async def test_lifting_a_range_that_is_not_blocked_is_not_found(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        with pytest.raises(NotFoundError):
            await daemon.sms_guard.lift(OTHER)
        for bad in ("14155552", "+1415555", "+141555520", "+1415555x"):
            with pytest.raises(ValidationError):
                await daemon.sms_guard.lift(bad)


async def test_samples_older_than_the_window_no_longer_count(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(19):
            await issue(daemon, n)
        clock.advance(WINDOW + WINDOW // 60)
        for n in range(19):
            await issue(daemon, n + 19)
        assert await daemon.sms_guard.blocks() == []


async def test_verification_after_the_window_credits_nothing(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    config = {"conversion_window_seconds": 300, "conversion_min_samples": 5}
    async with daemon_with(make_config, backend, clock, **config) as daemon:
        codes = [await issue_and_read(daemon, n) for n in range(2)]
        clock.advance(301)  # the codes still verify (otp.ttl_seconds 600)
        for n, code in enumerate(codes):
            assert (await daemon.otp.verify(user_id=user(n), code=code)).verified
        for n in range(5):
            await issue(daemon, n + 2)
        await refused(daemon, 7)


async def test_refused_request_is_not_counted_as_a_code_sent(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    config = make_config(backend, sms=LOUD, otp={"per_user_hour": 1})
    async with Otpd(config, clock=clock) as daemon:
        await daemon.otp.issue(user_id="same", channel="sms", phone=number(0))
        for n in range(30):  # refused by the user's limit: no code goes out
            with pytest.raises(RateLimitedError) as info:
                await daemon.otp.issue(user_id="same", channel="sms", phone=number(n))
            assert info.value.scope == "user_hour"
        for n in range(19):
            await issue(daemon, n)
        assert await daemon.sms_guard.blocks() == []


async def test_zero_min_samples_turns_the_rule_off(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock, conversion_min_samples=0) as daemon:
        for n in range(40):
            await issue(daemon, n)


async def test_test_recipients_are_not_counted(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    fixed = {number(n): "123456" for n in range(25)}
    config = make_config(backend, sms=LOUD, otp={"test_recipients": fixed})
    async with Otpd(config, clock=clock) as daemon:
        for n in range(25):
            await issue(daemon, n)
        assert await daemon.sms_guard.blocks() == []


@pytest.mark.parametrize("backend", ["redis"])
async def test_the_prefix_is_not_readable_in_the_store(
    make_config: ConfigFactory, backend: str, clock: FakeClock
) -> None:
    async with daemon_with(make_config, backend, clock) as daemon:
        for n in range(20):
            await issue(daemon, n)
        await refused(daemon, 20)
        await wait_idle(daemon)
        store = daemon.store
        assert isinstance(store, RedisStore)
        redis = store.redis
        dump = []
        async for key in redis.scan_iter(match=f"{daemon.config.store.key_prefix}*"):
            kind = await redis.type(key)
            if kind == "hash":
                dump.append(repr(await redis.hgetall(key)))
            elif kind == "zset":
                dump.append(repr(await redis.zrange(key, 0, -1, withscores=True)))
            elif kind == "stream":
                dump.append(repr(await redis.xrange(key)))
            elif kind == "string":
                dump.append(repr(await redis.get(key)))
            dump.append(key)
        text = "\n".join(dump)
        assert "smsblk:" in text
        assert RANGE[1:] not in text
