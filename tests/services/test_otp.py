"""The OTP use case end to end without HTTP, on both stores."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
from pathlib import Path

import pytest
import structlog

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.errors import RateLimitedError, ValidationError
from otpd.models import TaskStatus, VerifyReason
from tests.conftest import ConfigFactory, outbox_files, wait_idle


async def wait_sent(daemon: Otpd, task_ids: list[str]) -> None:
    await wait_idle(daemon)
    records = [await daemon.tasks.get(t) for t in task_ids]
    assert {r.status for r in records} == {TaskStatus.SENT}


def code_from_email(path: Path) -> str:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    body = msg.get_body(("plain",))
    assert body is not None
    match = re.search(r"\b(\d{6})\b", body.get_content())
    assert match is not None
    return match.group(1)


def code_from_sms(path: Path) -> str:
    match = re.search(r"\b(\d{6}) is your", path.read_text())
    assert match is not None
    return match.group(1)


async def test_issued_code_arrives_by_email_and_verifies_once(otpd: Otpd) -> None:
    issued = await otpd.otp.issue(user_id="u1", channel="email", email="Jane@Example.COM")
    await wait_sent(otpd, [d.task_id for d in issued.deliveries])
    [eml] = outbox_files(otpd.config, ".eml")
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert msg["To"] == "Jane@example.com"
    assert msg.get_body(("html",)) is not None
    code = code_from_email(eml)
    assert (await otpd.otp.verify(user_id="u1", code=code)).verified
    again = await otpd.otp.verify(user_id="u1", code=code)
    assert again.reason is VerifyReason.NO_ACTIVE_CODE


async def test_channel_both_sends_the_same_code_by_email_and_sms(otpd: Otpd) -> None:
    issued = await otpd.otp.issue(
        user_id="u1", channel="both", email="a@example.com", phone="+14155552671"
    )
    assert [d.channel.value for d in issued.deliveries] == ["email", "sms"]
    await wait_sent(otpd, [d.task_id for d in issued.deliveries])
    [eml] = outbox_files(otpd.config, ".eml")
    [txt] = outbox_files(otpd.config, ".txt")
    assert code_from_email(eml) == code_from_sms(txt)
    assert "+14155552671" in txt.read_text()


async def test_code_length_follows_config(make_config: ConfigFactory, backend: str) -> None:
    async with Otpd(make_config(backend, otp={"length": 8})) as daemon:
        issued = await daemon.otp.issue(user_id="u1", channel="sms", phone="+14155552671")
        await wait_sent(daemon, [d.task_id for d in issued.deliveries])
        [txt] = outbox_files(daemon.config, ".txt")
        assert re.search(r"\b\d{8} is your", txt.read_text())


async def test_expired_code_no_longer_verifies(otpd: Otpd, clock: FakeClock) -> None:
    issued = await otpd.otp.issue(user_id="u1", channel="sms", phone="+14155552671")
    await wait_sent(otpd, [d.task_id for d in issued.deliveries])
    code = code_from_sms(outbox_files(otpd.config, ".txt")[0])
    clock.advance(otpd.config.otp.ttl_seconds)
    result = await otpd.otp.verify(user_id="u1", code=code)
    assert result.reason is VerifyReason.NO_ACTIVE_CODE


async def test_code_is_bound_to_its_purpose(otpd: Otpd) -> None:
    issued = await otpd.otp.issue(
        user_id="u1", channel="sms", phone="+14155552671", purpose="reset"
    )
    await wait_sent(otpd, [d.task_id for d in issued.deliveries])
    code = code_from_sms(outbox_files(otpd.config, ".txt")[0])
    assert not (await otpd.otp.verify(user_id="u1", code=code)).verified
    assert (await otpd.otp.verify(user_id="u1", code=code, purpose="reset")).verified


async def test_sixth_code_in_an_hour_is_rate_limited_with_retry_after(
    otpd: Otpd, clock: FakeClock
) -> None:
    for _ in range(5):
        await otpd.otp.issue(user_id="u1", channel="sms", phone="+14155552671")
        clock.advance(60)
    with pytest.raises(RateLimitedError) as info:
        await otpd.otp.issue(user_id="u1", channel="sms", phone="+14155552671")
    assert info.value.scope == "user_hour"
    assert info.value.retry_after == 3600 - 5 * 60


async def test_per_ip_limit_spans_users(make_config: ConfigFactory, backend: str) -> None:
    async with Otpd(make_config(backend, otp={"per_ip_hour": 2})) as daemon:
        for user in ("a", "b"):
            await daemon.otp.issue(
                user_id=user, channel="sms", phone="+14155552671", client_ip="203.0.113.5"
            )
        with pytest.raises(RateLimitedError) as info:
            await daemon.otp.issue(
                user_id="c", channel="sms", phone="+14155552671", client_ip="203.0.113.5"
            )
        assert info.value.scope == "ip_hour"
        await daemon.otp.issue(
            user_id="c", channel="sms", phone="+14155552671", client_ip="203.0.113.6"
        )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"channel": "email"}, "email"),
        ({"channel": "sms"}, "phone"),
        ({"channel": "fax", "email": "a@example.com"}, "channel"),
        ({"channel": "email", "email": "not-an-address"}, "email"),
        ({"channel": "sms", "phone": "4155552671"}, "phone"),
        ({"channel": "sms", "phone": "+1415"}, "phone"),
        ({"channel": "sms", "phone": "+14155552671", "client_ip": "999.1.1.1"}, "client_ip"),
        ({"channel": "sms", "phone": "+14155552671", "purpose": "Log In"}, "purpose"),
        ({"channel": "sms", "phone": "+14155552671", "user_id": "a b"}, "user_id"),
    ],
)
async def test_invalid_input_names_the_field(
    otpd: Otpd, kwargs: dict[str, str], field: str
) -> None:
    args = {"user_id": "u1", **kwargs}
    with pytest.raises(ValidationError) as info:
        await otpd.otp.issue(**args)
    assert field in info.value.fields


async def test_concurrent_verifies_of_one_code_succeed_exactly_once(otpd: Otpd) -> None:
    issued = await otpd.otp.issue(user_id="race", channel="sms", phone="+14155552671")
    await wait_sent(otpd, [d.task_id for d in issued.deliveries])
    code = code_from_sms(outbox_files(otpd.config, ".txt")[0])
    results = await asyncio.gather(*(otpd.otp.verify(user_id="race", code=code) for _ in range(50)))
    assert sum(r.verified for r in results) == 1
    assert {r.reason for r in results if not r.verified} == {VerifyReason.NO_ACTIVE_CODE}


async def test_concurrent_wrong_guesses_never_exceed_max_attempts(otpd: Otpd) -> None:
    issued = await otpd.otp.issue(user_id="brute", channel="sms", phone="+14155552671")
    await wait_sent(otpd, [d.task_id for d in issued.deliveries])
    code = code_from_sms(outbox_files(otpd.config, ".txt")[0])
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    results = await asyncio.gather(
        *(otpd.otp.verify(user_id="brute", code=wrong) for _ in range(30))
    )
    assert sum(r.reason is VerifyReason.INVALID_CODE for r in results) == 3
    assert (
        await otpd.otp.verify(user_id="brute", code=code)
    ).reason is VerifyReason.TOO_MANY_ATTEMPTS


async def test_concurrent_issues_respect_the_limit_exactly(otpd: Otpd) -> None:
    outcomes = await asyncio.gather(
        *(otpd.otp.issue(user_id="burst", channel="sms", phone="+14155552671") for _ in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 5
    assert all(isinstance(o, RateLimitedError) for o in outcomes if isinstance(o, BaseException))


async def test_no_log_line_contains_the_code(otpd: Otpd) -> None:
    with structlog.testing.capture_logs() as logs:
        issued = await otpd.otp.issue(
            user_id="u1", channel="both", email="a@example.com", phone="+14155552671"
        )
        await wait_sent(otpd, [d.task_id for d in issued.deliveries])
        code = code_from_sms(outbox_files(otpd.config, ".txt")[0])
        await otpd.otp.verify(user_id="u1", code="000000" if code != "000000" else "111111")
        await otpd.otp.verify(user_id="u1", code=code)
    assert logs, "the flow should log audit lines"
    assert code not in repr(logs)
    assert any(entry["event"] == "audit.otp_verified" for entry in logs)


async def test_every_record_of_the_flow_reads_with_its_id_event_and_time_first(
    otpd: Otpd,
) -> None:
    issued = await otpd.otp.issue(user_id="u1", channel="sms", phone="+14155552671")
    await wait_sent(otpd, [d.task_id for d in issued.deliveries])
    code = code_from_sms(outbox_files(otpd.config, ".txt")[0])
    await otpd.otp.verify(user_id="u1", code="000000" if code != "000000" else "111111")
    await otpd.otp.verify(user_id="u1", code=code)
    events, _ = await otpd.audit.events(user_id="u1")
    # a verify's outcome fields are added by the store, after what was known before it
    assert {"otp_issued", "otp_failed", "otp_verified"} <= {e["event"] for e in events}
    assert {tuple(e)[:3] for e in events} == {("id", "event", "at")}


@pytest.mark.parametrize("backend", ["memory", "redis"])  # redis: the durable queue too
async def test_full_cycle_runs_without_threads(make_config: ConfigFactory, backend: str) -> None:
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]
    async with Otpd(make_config(backend)) as daemon:
        from tests.conftest import open_client

        queue = type(daemon.dispatcher.queue).__name__
        assert queue == ("DurableQueue" if backend == "redis" else "InProcessQueue")

        client = await open_client(daemon)
        try:
            resp = await client.post(
                "/v1/otp",
                json={
                    "user_id": "t",
                    "channel": "both",
                    "email": "t@example.com",
                    "phone": "+14155552671",
                },
            )
            assert resp.status == 202
            body = await resp.json()
            await wait_sent(daemon, [d["task_id"] for d in body["deliveries"]])
            code = code_from_sms(outbox_files(daemon.config, ".txt")[0])
            resp = await client.post("/v1/otp/verify", json={"user_id": "t", "code": code})
            assert await resp.json() == {"verified": True}
        finally:
            await client.close()
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]


async def test_the_fallback_path_runs_without_threads(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """store.fallback = "memory": Redis stops mid-cycle and comes back; still one thread."""
    from otpd.store.fallback import FallbackStore
    from tests.conftest import RestartableRedis, open_client

    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]
    server = RestartableRedis(tmp_path)
    server.start()
    store = {"redis_url": server.url, "fallback": "memory", "socket_timeout_seconds": 0.5}
    try:
        async with Otpd(make_config("redis", store=store)) as daemon:
            assert isinstance(daemon.store, FallbackStore)
            client = await open_client(daemon)
            try:
                for phase in ("outage", "after"):
                    if phase == "outage":
                        server.stop()
                    else:
                        server.start()
                        async with asyncio.timeout(10):
                            while daemon.store.degraded:
                                await asyncio.sleep(0.05)
                    body = {"user_id": phase, "channel": "sms", "phone": "+14155552671"}
                    resp = await client.post("/v1/otp", json=body)
                    assert resp.status == 202, await resp.text()
                    (delivery,) = (await resp.json())["deliveries"]
                    async with asyncio.timeout(10):  # polled: wait_idle asks Redis too
                        while (await daemon.tasks.get(delivery["task_id"])).status not in (
                            TaskStatus.SENT,
                            TaskStatus.FAILED,
                        ):
                            await asyncio.sleep(0.02)
                    task = await daemon.tasks.get(delivery["task_id"])
                    assert task.status is TaskStatus.SENT, task
                    sms = Path(daemon.config.outbox.dir) / task.provider_message_id
                    code = code_from_sms(sms)
                    resp = await client.post(
                        "/v1/otp/verify", json={"user_id": phase, "code": code}
                    )
                    assert await resp.json() == {"verified": True}
                    assert daemon.store.degraded is (phase == "outage")
            finally:
                await client.close()
    finally:
        server.stop()
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]


async def test_otp_over_the_recipient_limit_is_refused_up_front(
    make_config: ConfigFactory, backend: str
) -> None:
    async with Otpd(make_config(backend, email={"per_recipient_hour": 2})) as daemon:
        for user in ("a", "b"):
            await daemon.otp.issue(user_id=user, channel="email", email="shared@example.com")
        with pytest.raises(RateLimitedError) as info:
            await daemon.otp.issue(user_id="c", channel="email", email="shared@example.com")
        assert info.value.scope == "email_recipient_hour"
        # the refused request counted nothing: user c may still use another address
        await daemon.otp.issue(user_id="c", channel="email", email="other@example.com")


async def test_budget_charge_is_refunded_when_a_limit_refuses_the_code(
    make_config: ConfigFactory, backend: str
) -> None:
    config = make_config(
        backend, otp={"per_user_hour": 1}, sms={"daily_budget": 1.0, "default_price": 0.4}
    )
    async with Otpd(config) as daemon:
        await daemon.otp.issue(user_id="u", channel="sms", phone="+14155552671")
        for _ in range(3):  # refused by the user limit: each charge is taken back
            with pytest.raises(RateLimitedError):
                await daemon.otp.issue(user_id="u", channel="sms", phone="+14155552671")
        spend = daemon.metrics.registry.get_sample_value("otpd_sms_spend_today")
        assert spend == pytest.approx(0.4)
        await daemon.otp.issue(user_id="v", channel="sms", phone="+14155552672")
        assert daemon.metrics.registry.get_sample_value("otpd_sms_spend_today") == pytest.approx(
            0.8
        )


async def test_rate_limits_hold_across_daemon_instances_on_redis(
    make_config: ConfigFactory,
) -> None:
    config = make_config("redis")  # both instances share one Redis and key prefix
    async with Otpd(config) as first, Otpd(config) as second:
        for daemon in (first, second, first, second, first):
            await daemon.otp.issue(user_id="shared", channel="sms", phone="+14155552671")
        for daemon in (first, second):
            with pytest.raises(RateLimitedError):
                await daemon.otp.issue(user_id="shared", channel="sms", phone="+14155552671")


@pytest.mark.parametrize("address", ["=?utf-8?q?x=0D=0A?=@example.com", "a\r\nb@example.com"])
async def test_a_poison_recipient_is_refused_up_front_and_nothing_is_queued(
    otpd: Otpd, address: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await otpd.otp.issue(user_id="u1", channel="email", email=address)
    assert set(info.value.fields) == {"email"}
    with pytest.raises(ValidationError):
        await otpd.messages.send(channel="email", to=address, subject="s", text="t")
    assert otpd.dispatcher.depth == 0
