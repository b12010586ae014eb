import json
import secrets
from typing import Any

import pytest

from otpd.clock import FakeClock
from otpd.errors import ValidationError
from otpd.store.base import Store
from otpd.store.memory import MemoryStore
from otpd.webhooks.events import DeliveryOutcome, WebhookRefusedError
from otpd.webhooks.mailgun import MailgunWebhook, mailgun_signature

KEY = "key-" + "f" * 32


def _body(clock: FakeClock, event: dict[str, Any], *, key: str = KEY, age: float = 0) -> bytes:
    timestamp, token = str(int(clock.time() - age)), secrets.token_hex(25)
    signature = {
        "timestamp": timestamp,
        "token": token,
        "signature": mailgun_signature(key, timestamp, token),
    }
    return json.dumps({"signature": signature, "event-data": event}).encode()


def _event(event: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "ev-" + event,
        "event": event,
        "timestamp": 1_800_000_000.5,
        "recipient": "alice@example.com",
        "message": {"headers": {"message-id": "20260101.1@mg.example.com"}},
        **extra,
    }


@pytest.fixture
def hook(store: Store, clock: FakeClock) -> MailgunWebhook:
    """On the memory store and on a real Redis store (the root ``store`` fixture)."""
    return MailgunWebhook(signing_key=KEY, store=store, clock=clock)


async def test_delivered_event_carries_the_bracketed_id_the_send_api_returned(
    hook: MailgunWebhook, clock: FakeClock
) -> None:
    [event] = await hook.events({}, _body(clock, _event("delivered")))
    assert event.message_id == "<20260101.1@mg.example.com>"
    assert (event.provider, event.event_id, event.outcome) == (
        "mailgun",
        "ev-delivered",
        "delivered",
    )


async def test_permanent_failure_bounces_and_temporary_is_ignored(
    hook: MailgunWebhook, clock: FakeClock
) -> None:
    [event] = await hook.events({}, _body(clock, _event("failed", severity="permanent")))
    assert (event.outcome, event.permanent) == (DeliveryOutcome.BOUNCED, True)
    assert await hook.events({}, _body(clock, _event("failed", severity="temporary"))) == []


async def test_complaint_is_permanent(hook: MailgunWebhook, clock: FakeClock) -> None:
    [event] = await hook.events({}, _body(clock, _event("complained")))
    assert (event.outcome, event.permanent) == (DeliveryOutcome.COMPLAINED, True)


async def test_replayed_token_is_refused(hook: MailgunWebhook, clock: FakeClock) -> None:
    body = _body(clock, _event("delivered"))
    await hook.events({}, body)
    with pytest.raises(WebhookRefusedError):
        await hook.events({}, body)


async def test_wrong_key_and_stale_or_future_timestamps_are_refused(
    hook: MailgunWebhook, clock: FakeClock
) -> None:
    for body in (
        _body(clock, _event("delivered"), key="key-other"),
        _body(clock, _event("delivered"), age=301),
        _body(clock, _event("delivered"), age=-301),
        b"\xff not json",
        b"[" * 100_000,
    ):
        with pytest.raises(WebhookRefusedError):
            await hook.events({}, body)


async def test_well_signed_garbage_is_a_validation_error(
    hook: MailgunWebhook, clock: FakeClock
) -> None:
    with pytest.raises(ValidationError):
        await hook.events({}, _body(clock, {"event": "delivered"}))


async def test_unconfigured_key_refuses(clock: FakeClock) -> None:
    hook = MailgunWebhook(signing_key="", store=MemoryStore(clock=clock), clock=clock)
    with pytest.raises(WebhookRefusedError):
        await hook.events({}, _body(clock, _event("delivered")))
