"""Provider reports applied to task records: linked on acceptance, once per event, in any
order, parked (sealed) when they come before the link."""

from __future__ import annotations

import redis.asyncio as aioredis

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.models import Channel, TaskRecord, TaskStatus
from otpd.store.redis import RedisStore
from otpd.webhooks import DeliveryEvent, DeliveryOutcome
from tests.conftest import ConfigFactory


def sent(clock: FakeClock, task_id: str, provider: str = "twilio", mid: str = "SM1") -> TaskRecord:
    now = clock.time()
    return TaskRecord(
        task_id=task_id,
        channel=Channel.SMS,
        status=TaskStatus.SENT,
        tag="otp_code",
        created_at=now,
        updated_at=now,
        attempts=1,
        provider=provider,
        provider_message_id=mid,
    )


def event(outcome: DeliveryOutcome, event_id: str, at: float, mid: str = "SM1") -> DeliveryEvent:
    return DeliveryEvent(
        "twilio",
        mid,
        event_id,
        outcome,
        at,
        reason="" if outcome is DeliveryOutcome.DELIVERED else "30005",
        recipient="+14155550100",
    )


async def test_reports_move_a_sent_task_on_and_a_late_delivered_never_undoes_them(
    otpd: Otpd, clock: FakeClock
) -> None:
    record = sent(clock, "tsk_" + "a" * 24)
    await otpd.store.put_task(record, 3600)
    await otpd.deliveries.linked(record)
    t = clock.time()
    await otpd.deliveries.apply([event(DeliveryOutcome.UNDELIVERED, "e1", t + 2)])
    await otpd.deliveries.apply([event(DeliveryOutcome.DELIVERED, "e2", t + 1)])
    got = await otpd.tasks.get(record.task_id)
    assert (got.status, got.reason, got.delivered_at) == (TaskStatus.UNDELIVERED, "30005", 0.0)
    await otpd.audit.flush()
    records, _ = await otpd.audit.events(event="message_undelivered")
    assert [r["task_id"] for r in records] == [record.task_id]
    assert "+14155550100" not in repr(records)


async def test_a_report_before_the_link_applies_when_the_task_is_linked(
    otpd: Otpd, clock: FakeClock
) -> None:
    record = sent(clock, "tsk_" + "b" * 24)
    await otpd.store.put_task(record, 3600)
    t = clock.time()
    await otpd.deliveries.apply([event(DeliveryOutcome.DELIVERED, "e1", t + 1)])
    assert (await otpd.tasks.get(record.task_id)).status is TaskStatus.SENT
    await otpd.deliveries.linked(record)
    got = await otpd.tasks.get(record.task_id)
    assert (got.status, got.delivered_at) == (TaskStatus.DELIVERED, t + 1)


async def test_a_provider_without_reports_is_never_linked(otpd: Otpd, clock: FakeClock) -> None:
    record = sent(clock, "tsk_" + "c" * 24, provider="outbox", mid="m.eml")
    await otpd.store.put_task(record, 3600)
    await otpd.deliveries.linked(record)
    await otpd.deliveries.apply(
        [DeliveryEvent("outbox", "m.eml", "e1", DeliveryOutcome.DELIVERED, clock.time())]
    )
    assert (await otpd.tasks.get(record.task_id)).status is TaskStatus.SENT


async def test_a_parked_report_is_sealed_at_rest(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    config = make_config("redis")
    async with Otpd(config, clock=clock) as daemon:
        await daemon.deliveries.apply([event(DeliveryOutcome.BOUNCED, "e1", clock.time())])
        assert isinstance(daemon.store, RedisStore)
        client = aioredis.from_url(config.store.redis_url)
        try:
            dump = b""
            async for key in client.scan_iter(match=config.store.key_prefix + "pm:*"):
                dump += key + repr(await client.hgetall(key)).encode()
        finally:
            await client.aclose()
        assert b"r:" in dump  # the parked report
        assert b"14155550100" not in dump and b"SM1" not in dump
