"""SNS messages carrying SES events, verified against a real https server that serves the
signing certificate and answers subscription confirmations (its CA made by trustme)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

from otpd.clock import FakeClock
from otpd.config import WebhooksConfig
from otpd.errors import UnavailableError, ValidationError
from otpd.providers.session import SharedSession
from otpd.webhooks.events import DeliveryEvent, DeliveryOutcome, WebhookRefusedError
from otpd.webhooks.sns import MESSAGE_TYPE_HEADER, SnsWebhook
from tests.webhooks.sns_fake import (
    CERT_NAME,
    CERT_PATTERN,
    NOT_AFTER,
    OTHER_KEY,
    OTHER_TOPIC,
    SES_ID,
    SUBSCRIBE_PATTERN,
    TOPIC,
    SnsServer,
    body,
    confirmation,
    notification,
    serve_sns,
    ses,
    sign,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(path)
    return str(path)


@pytest.fixture
async def sns_server(ca: trustme.CA) -> AsyncIterator[SnsServer]:
    async with serve_sns(ca) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[SharedSession]:
    async with SharedSession() as shared:
        yield shared


HookFactory = Callable[..., SnsWebhook]


@pytest.fixture
def make_hook(ca_file: str, http: SharedSession, clock: FakeClock) -> HookFactory:
    def factory(**overrides: Any) -> SnsWebhook:
        values: dict[str, Any] = {
            "sns_topic_arns": (TOPIC,),
            "sns_cert_url_pattern": CERT_PATTERN,
            "sns_subscribe_url_pattern": SUBSCRIBE_PATTERN,
            "sns_ca_file": ca_file,
            **overrides,
        }
        return SnsWebhook(config=WebhooksConfig(**values), http=http, clock=clock)

    return factory


@pytest.fixture
def hook(make_hook: HookFactory) -> SnsWebhook:
    return make_hook()


async def receive(hook: SnsWebhook, message: dict[str, Any]) -> list[DeliveryEvent]:
    return await hook.events(*body(message))


async def refused(hook: SnsWebhook, message: dict[str, Any]) -> str:
    with pytest.raises(WebhookRefusedError) as caught:
        await receive(hook, message)
    return caught.value.message


async def test_a_signed_v2_delivery_gives_a_delivered_event_for_the_ses_message_id(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    delivery = {"timestamp": "2027-01-15T08:00:01.500Z", "recipients": ["ana@example.com"]}
    message = sign(notification(ses("Delivery", delivery), clock.time()), sns_server)
    [event] = await receive(hook, message)
    assert event == DeliveryEvent(
        provider="ses",
        message_id=SES_ID,
        event_id=message["MessageId"],
        outcome=DeliveryOutcome.DELIVERED,
        occurred_at=datetime(2027, 1, 15, 8, 0, 1, 500000, tzinfo=UTC).timestamp(),
    )


async def test_a_v1_sha1_signature_with_a_subject_is_accepted(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = notification(ses("Delivery", {}), clock.time(), Subject="Amazon SES Email Event")
    [event] = await receive(hook, sign(message, sns_server, version="1"))
    assert event.outcome is DeliveryOutcome.DELIVERED
    assert event.occurred_at == clock.time() // 1  # no delivery.timestamp: the SNS Timestamp


async def test_a_permanent_bounce_gives_one_permanent_event_per_recipient_without_diagnostics(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    bounce = {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "timestamp": "2027-01-15T08:00:02.000Z",
        "bouncedRecipients": [
            {
                "emailAddress": "ana@example.com",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 <ana@example.com>: user unknown",
            },
            {"emailAddress": "bo@example.com"},
        ],
    }
    message = sign(notification(ses("Bounce", bounce), clock.time()), sns_server)
    events = await receive(hook, message)
    assert [(e.recipient, e.reason, e.event_id) for e in events] == [
        ("ana@example.com", "Permanent/General 5.1.1", message["MessageId"] + "#0"),
        ("bo@example.com", "Permanent/General", message["MessageId"] + "#1"),
    ]
    assert {(e.outcome, e.permanent, e.message_id) for e in events} == {
        (DeliveryOutcome.BOUNCED, True, SES_ID)
    }


async def test_a_complaint_identity_notification_gives_a_permanent_complaint(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    complaint = {
        "complainedRecipients": [{"emailAddress": "ana@example.com"}],
        "complaintFeedbackType": "abuse",
        "timestamp": "2027-01-15T09:00:00Z",
    }
    event = ses("Complaint", complaint, key="notificationType")
    [found] = await receive(hook, sign(notification(event, clock.time()), sns_server))
    assert (found.outcome, found.permanent, found.recipient, found.reason) == (
        DeliveryOutcome.COMPLAINED,
        True,
        "ana@example.com",
        "abuse",
    )


async def test_a_transient_bounce_is_undelivered_and_suppresses_nothing(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    bounce = {
        "bounceType": "Transient",
        "bounceSubType": "MailboxFull",
        "bouncedRecipients": [{"emailAddress": "ana@example.com", "status": "4.2.2"}],
    }
    [event] = await receive(
        hook, sign(notification(ses("Bounce", bounce), clock.time()), sns_server)
    )
    assert (event.outcome, event.permanent, event.reason) == (
        DeliveryOutcome.UNDELIVERED,
        False,
        "Transient/MailboxFull 4.2.2",
    )


@pytest.mark.parametrize("kind", ["Send", "Open", "Click", "DeliveryDelay", "Reject"])
async def test_other_ses_events_give_no_events(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock, kind: str
) -> None:
    assert await receive(hook, sign(notification(ses(kind, {}), clock.time()), sns_server)) == []


async def test_a_signature_by_another_key_is_refused(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = sign(notification(ses("Delivery", {}), clock.time()), sns_server, key=OTHER_KEY)
    assert await refused(hook, message) == "signature is missing or wrong"


async def test_a_tampered_message_is_refused(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = sign(notification(ses("Delivery", {}), clock.time()), sns_server)
    message["Message"] = json.dumps(ses("Bounce", {"bounceType": "Permanent"}))
    assert await refused(hook, message) == "signature is missing or wrong"


async def test_a_message_type_header_that_differs_from_the_signed_type_is_refused(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = sign(notification(ses("Delivery", {}), clock.time()), sns_server)
    headers = {MESSAGE_TYPE_HEADER: "SubscriptionConfirmation"}
    with pytest.raises(WebhookRefusedError):
        await hook.events(headers, json.dumps(message).encode())


async def test_a_certificate_url_off_the_pattern_is_refused_without_fetching(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    for url in (
        f"{sns_server.base}/evil.pem",
        f"{sns_server.base}/{CERT_NAME}?x=1",
        f"https://127.0.0.1.attacker.example/{CERT_NAME}",
    ):
        message = sign(notification(ses("Delivery", {}), clock.time()), sns_server)
        message["SigningCertURL"] = url
        assert "SigningCertURL" in await refused(hook, message)
    assert sns_server.requests == []


async def test_an_unlisted_topic_is_refused_without_fetching(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = notification(ses("Delivery", {}), clock.time(), TopicArn=OTHER_TOPIC)
    assert "topic" in await refused(hook, sign(message, sns_server))
    assert sns_server.requests == []


async def test_no_listed_topic_refuses_every_message(
    make_hook: HookFactory, sns_server: SnsServer, clock: FakeClock
) -> None:
    hook = make_hook(sns_topic_arns=())
    message = sign(notification(ses("Delivery", {}), clock.time()), sns_server)
    assert await refused(hook, message) == "ses webhooks are not configured"


@pytest.mark.parametrize("age", [3601.0, -301.0])
async def test_a_timestamp_too_old_or_too_far_ahead_is_stale(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock, age: float
) -> None:
    message = sign(notification(ses("Delivery", {}), clock.time() - age), sns_server)
    assert await refused(hook, message) == "signature is stale"
    assert sns_server.requests == []


async def test_a_retry_within_the_max_age_is_accepted(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = sign(notification(ses("Delivery", {}), clock.time() - 3500), sns_server)
    assert len(await receive(hook, message)) == 1


@pytest.mark.parametrize("version", ["3", "", "2 "])
async def test_an_unknown_signature_version_is_refused(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock, version: str
) -> None:
    message = sign(notification(ses("Delivery", {}), clock.time()), sns_server)
    message["SignatureVersion"] = version
    assert "SignatureVersion" in await refused(hook, message)


async def test_the_certificate_is_fetched_once_for_many_messages_even_concurrent_ones(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    messages = [
        sign(notification(ses("Delivery", {}), clock.time(), MessageId=f"m-{i}"), sns_server)
        for i in range(8)
    ]
    results = await asyncio.gather(*(receive(hook, m) for m in messages[:5]))
    for message in messages[5:]:
        results.append(await receive(hook, message))
    assert [len(r) for r in results] == [1] * 8
    assert sns_server.count("/SimpleNotificationService-") == 1


async def test_an_expired_certificate_is_dropped_from_the_cache_and_refused(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    assert len(
        await receive(hook, sign(notification(ses("Delivery", {}), clock.time()), sns_server))
    )
    clock.advance(NOT_AFTER.timestamp() - clock.time() + 60)
    message = sign(notification(ses("Delivery", {}), clock.time()), sns_server)
    assert await refused(hook, message) == "the signing certificate is not valid now"
    assert sns_server.count("/SimpleNotificationService-") == 2


async def test_a_certificate_that_cannot_be_fetched_is_a_503(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = notification(ses("Delivery", {}), clock.time())
    signed = sign(message, sns_server)
    signed["SigningCertURL"] = f"{sns_server.base}/SimpleNotificationService-ffff.pem"
    with pytest.raises(UnavailableError):
        await receive(hook, signed)


async def test_a_server_the_ca_file_does_not_trust_is_a_503(
    make_hook: HookFactory, sns_server: SnsServer, clock: FakeClock
) -> None:
    hook = make_hook(sns_ca_file="")  # the system's CAs do not know the test CA
    with pytest.raises(UnavailableError):
        await receive(hook, sign(notification(ses("Delivery", {}), clock.time()), sns_server))
    assert sns_server.requests == []


async def test_a_subscription_confirmation_for_a_listed_topic_is_confirmed(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    assert await receive(hook, sign(confirmation(sns_server, clock.time()), sns_server)) == []
    assert sns_server.count("/?Action=ConfirmSubscription&") == 1


async def test_a_subscription_confirmation_for_an_unlisted_topic_fetches_nothing(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = sign(confirmation(sns_server, clock.time(), OTHER_TOPIC), sns_server)
    assert "topic" in await refused(hook, message)
    assert sns_server.requests == []


async def test_a_subscribe_url_off_the_pattern_is_refused_without_fetching(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = confirmation(sns_server, clock.time())
    message["SubscribeURL"] = f"{sns_server.base}/internal/admin?Action=ConfirmSubscription&"
    assert "SubscribeURL" in await refused(hook, sign(message, sns_server))
    assert sns_server.requests == []


async def test_an_unsubscribe_confirmation_gives_no_events_and_fetches_only_the_certificate(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock
) -> None:
    message = {**confirmation(sns_server, clock.time()), "Type": "UnsubscribeConfirmation"}
    assert await receive(hook, sign(message, sns_server)) == []
    assert sns_server.count("/?") == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"Notification"',
        b'{"Type": ["Notification"]}',
        b'{"Type": "Notification"}',
        b'{"Type": "Notification", "Message": {}, "MessageId": "m", "Timestamp": "t", '
        b'"TopicArn": "' + TOPIC.encode() + b'", "SignatureVersion": "2", "Signature": "x", '
        b'"SigningCertURL": "u"}',
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
async def test_garbage_bodies_are_validation_errors(hook: SnsWebhook, raw: bytes) -> None:
    with pytest.raises(ValidationError):
        await hook.events({MESSAGE_TYPE_HEADER: "Notification"}, raw)


@pytest.mark.parametrize("timestamp", ["yesterday", "2027-01-15T08:00:00", "9" * 50])
async def test_a_timestamp_that_is_no_zoned_iso_time_is_a_validation_error(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock, timestamp: str
) -> None:
    message = {**notification(ses("Delivery", {}), clock.time()), "Timestamp": timestamp}
    with pytest.raises(ValidationError):
        await receive(hook, sign(message, sns_server))


@pytest.mark.parametrize(
    "ses_message",
    ["not json", "[]", json.dumps({"eventType": "Bounce", "mail": {}}), json.dumps(ses("Bounce"))],
)
async def test_a_signed_message_that_is_no_ses_event_is_a_validation_error(
    hook: SnsWebhook, sns_server: SnsServer, clock: FakeClock, ses_message: str
) -> None:
    message = {**notification({}, clock.time()), "Message": ses_message}
    with pytest.raises(ValidationError):
        await receive(hook, sign(message, sns_server))
