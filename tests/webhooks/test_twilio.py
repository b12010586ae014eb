from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from otpd.clock import FakeClock
from otpd.errors import ValidationError
from otpd.webhooks.events import DeliveryOutcome, WebhookRefusedError
from otpd.webhooks.twilio import TwilioWebhook, twilio_signature

TOKEN = "12345678901234567890123456789012"
URL = "https://otpd.example.com/webhooks/twilio"


def _hook(token: str = TOKEN) -> TwilioWebhook:
    return TwilioWebhook(auth_token=token, status_callback=URL, clock=FakeClock())


def _signed(params: dict[str, str], url: str = URL) -> tuple[dict[str, str], bytes]:
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    return {"X-Twilio-Signature": signature}, urlencode(params).encode()


FAILED_STOP = {
    "MessageSid": "SM" + "a" * 32,
    "MessageStatus": "undelivered",
    "ErrorCode": "21610",
    "To": "+15005550006",
}


def test_signature_matches_twilios_request_validator() -> None:
    params = {"b": "2", "a": "1 & =", "MessageSid": "SMx"}
    assert twilio_signature(TOKEN, URL, params) == RequestValidator(TOKEN).compute_signature(
        URL, params
    )


async def test_delivered_callback_becomes_delivered_event() -> None:
    headers, body = _signed({"MessageSid": "SM1", "MessageStatus": "delivered"})
    [event] = await _hook().events(headers, body)
    assert (event.provider, event.message_id, event.outcome) == ("twilio", "SM1", "delivered")
    assert not event.permanent


async def test_opt_out_code_21610_is_permanent_undelivered() -> None:
    headers, body = _signed(FAILED_STOP)
    [event] = await _hook().events(headers, body)
    assert event.outcome is DeliveryOutcome.UNDELIVERED
    assert (event.permanent, event.reason, event.recipient) == (True, "21610", "+15005550006")


async def test_carrier_failure_is_not_permanent() -> None:
    headers, body = _signed({**FAILED_STOP, "ErrorCode": "30003"})
    [event] = await _hook().events(headers, body)
    assert (event.permanent, event.reason) == (False, "30003")


async def test_retry_of_same_callback_keeps_event_id_and_other_status_changes_it() -> None:
    first = await _hook().events(*_signed(FAILED_STOP))
    again = await _hook().events(*_signed(FAILED_STOP))
    other = await _hook().events(*_signed({**FAILED_STOP, "MessageStatus": "failed"}))
    assert first[0].event_id == again[0].event_id != other[0].event_id


async def test_intermediate_statuses_are_ignored() -> None:
    for status in ("queued", "sending", "sent", "accepted"):
        assert await _hook().events(*_signed({"MessageSid": "SM1", "MessageStatus": status})) == []


async def test_signature_over_another_url_is_refused() -> None:
    headers, body = _signed(FAILED_STOP, url="http://internal:8080/webhooks/twilio")
    with pytest.raises(WebhookRefusedError):
        await _hook().events(headers, body)


async def test_wrong_token_changed_body_and_missing_signature_are_refused() -> None:
    headers, body = _signed(FAILED_STOP)
    with pytest.raises(WebhookRefusedError):
        await _hook("0" * 32).events(headers, body)
    with pytest.raises(WebhookRefusedError):
        await _hook().events(headers, body.replace(b"21610", b"30003"))
    with pytest.raises(WebhookRefusedError):
        await _hook().events({}, body)


async def test_unconfigured_webhook_refuses_everything() -> None:
    headers, body = _signed(FAILED_STOP)
    with pytest.raises(WebhookRefusedError):
        await _hook("").events(headers, body)


async def test_well_signed_callback_without_sid_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        await _hook().events(*_signed({"MessageStatus": "delivered"}))


async def test_undecodable_body_is_refused_not_crashed() -> None:
    with pytest.raises(WebhookRefusedError):
        await _hook().events({"X-Twilio-Signature": "x"}, b"\xff\xfe=\x80")
