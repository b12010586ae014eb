import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from otpd.clock import FakeClock
from otpd.errors import ValidationError
from otpd.webhooks.events import DeliveryOutcome, WebhookRefusedError
from otpd.webhooks.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER, SendGridWebhook


def _public(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def _signed(
    key: ec.EllipticCurvePrivateKey, events: Any, timestamp: float
) -> tuple[dict[str, str], bytes]:
    body, ts = json.dumps(events).encode(), str(int(timestamp))
    signature = key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: ts}, body


def _ev(event: str, **extra: Any) -> dict[str, Any]:
    return {
        "email": "a@example.com",
        "timestamp": 1_800_000_000,
        "event": event,
        "sg_event_id": "id-" + event,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **extra,
    }


KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def hook(clock: FakeClock) -> SendGridWebhook:
    return SendGridWebhook(public_key=_public(KEY), clock=clock)


async def test_batch_maps_events_and_strips_the_filter_suffix(
    hook: SendGridWebhook, clock: FakeClock
) -> None:
    batch = [
        _ev("processed"),
        _ev("delivered"),
        _ev("bounce", type="blocked"),
        _ev("bounce", type="bounce"),
        _ev("spamreport"),
        _ev("deferred"),
        _ev("dropped", reason="Bounced Address"),
    ]
    events = await hook.events(*_signed(KEY, batch, clock.time()))
    assert [(e.outcome, e.permanent) for e in events] == [
        (DeliveryOutcome.DELIVERED, False),
        (DeliveryOutcome.BOUNCED, False),
        (DeliveryOutcome.BOUNCED, True),
        (DeliveryOutcome.COMPLAINED, True),
        (DeliveryOutcome.BOUNCED, True),
    ]
    assert {e.message_id for e in events} == {"14c5d75ce93"}


async def test_pem_key_is_accepted(clock: FakeClock) -> None:
    pem = (
        KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    hook = SendGridWebhook(public_key=pem, clock=clock)
    assert len(await hook.events(*_signed(KEY, [_ev("delivered")], clock.time()))) == 1


async def test_wrong_key_changed_body_stale_and_missing_signature_are_refused(
    hook: SendGridWebhook, clock: FakeClock
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    headers, body = _signed(KEY, [_ev("delivered")], clock.time())
    cases = [
        _signed(other, [_ev("delivered")], clock.time()),
        (headers, body.replace(b"delivered", b"dElivered")),
        _signed(KEY, [_ev("delivered")], clock.time() - 301),
        ({TIMESTAMP_HEADER: headers[TIMESTAMP_HEADER]}, body),
        ({**headers, SIGNATURE_HEADER: "not base64!"}, body),
    ]
    for case in cases:
        with pytest.raises(WebhookRefusedError):
            await hook.events(*case)


async def test_well_signed_garbage_is_a_validation_error(
    hook: SendGridWebhook, clock: FakeClock
) -> None:
    for payload in ({"not": "a list"}, [1], [{"event": "delivered"}]):
        with pytest.raises(ValidationError):
            await hook.events(*_signed(KEY, payload, clock.time()))


async def test_unconfigured_key_refuses(clock: FakeClock) -> None:
    with pytest.raises(WebhookRefusedError):
        await SendGridWebhook(public_key="", clock=clock).events(
            *_signed(KEY, [_ev("delivered")], clock.time())
        )


def test_bad_key_text_is_a_value_error(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="public key"):
        SendGridWebhook(public_key="bm90IGEga2V5", clock=clock)
