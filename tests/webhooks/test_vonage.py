"""Vonage delivery receipts: the ``sig`` of every signature method, freshness, replays,
form and JSON bodies, and how statuses and error codes map to events."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from otpd.clock import FakeClock
from otpd.errors import ValidationError
from otpd.store.base import Store
from otpd.store.memory import MemoryStore
from otpd.webhooks.events import DeliveryOutcome, WebhookRefusedError
from otpd.webhooks.vonage import (
    SIGNATURE_METHODS,
    SignatureMethod,
    VonageWebhook,
    vonage_signature,
)

SECRET = "vonage-signature-secret"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json; charset=utf-8"}


def sign(params: dict[str, str], secret: str, method: str) -> str:
    """Written from Vonage's "Signing Messages" guide, not from the code under test: for
    each parameter, sorted by name, append "&name=value" with every & and = of the value
    turned into "_"; "MD5 hash" appends the secret and takes md5, the HMAC methods key an
    HMAC with the secret; the hex digest is the signature (HMACs come upper case)."""
    text = ""
    for name in sorted(params):
        text += "&" + name + "=" + re.sub("[&=]", "_", params[name])
    if method == "md5hash":
        return hashlib.md5(text.encode() + secret.encode()).hexdigest()  # noqa: S324
    return hmac.new(secret.encode(), text.encode(), getattr(hashlib, method)).hexdigest().upper()


def dlr(clock: FakeClock, **fields: str) -> dict[str, str]:
    """An unsigned delivered receipt as Vonage documents it; ``fields`` replace fields."""
    return {
        "msisdn": "447700900000",
        "to": "otpd",
        "network-code": "23410",
        "messageId": "0A0000001234567B",
        "price": "0.03330000",
        "status": "delivered",
        "scts": "2001011400",
        "err-code": "0",
        "api-key": "abcd1234",
        "message-timestamp": "2026-12-02 12:10:29",
        "timestamp": str(int(clock.time())),
        "nonce": secrets.token_hex(16),
        **fields,
    }


def signed(
    params: dict[str, str], *, secret: str = SECRET, method: str = "md5hash"
) -> dict[str, str]:
    return {**params, "sig": sign(params, secret, method)}


def form(params: dict[str, str]) -> bytes:
    return urlencode(params).encode()


def hook_for(store: Store, clock: FakeClock, method: SignatureMethod = "md5hash") -> VonageWebhook:
    return VonageWebhook(signature_secret=SECRET, method=method, store=store, clock=clock)


@pytest.fixture
def hook(store: Store, clock: FakeClock) -> VonageWebhook:
    """On the memory store and on a real Redis store (the root ``store`` fixture)."""
    return hook_for(store, clock)


def test_the_signature_matches_the_vector_of_vonages_python_sdk() -> None:
    # vonage-python-sdk tests/test_signature.py: md5hash of a=1, b=2, timestamp, "secret"
    params = {"a": "1", "b": "2", "timestamp": "1461605396"}
    vector = "6af838ef94998832dbfc29020b564830"
    assert sign(params, "secret", "md5hash") == vector
    assert vonage_signature("secret", "md5hash", params) == vector


@pytest.mark.parametrize("method", SIGNATURE_METHODS)
async def test_each_signature_method_verifies_a_form_receipt(
    store: Store, clock: FakeClock, method: SignatureMethod
) -> None:
    hook = hook_for(store, clock, method)
    [event] = await hook.events(FORM, form(signed(dlr(clock), method=method)))
    assert (event.provider, event.message_id, event.outcome) == (
        "vonage",
        "0A0000001234567B",
        DeliveryOutcome.DELIVERED,
    )
    other = next(m for m in SIGNATURE_METHODS if m != method)
    with pytest.raises(WebhookRefusedError, match="wrong"):
        await hook.events(FORM, form(signed(dlr(clock), method=other)))


async def test_a_json_receipt_verifies_like_a_form_one(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    body = json.dumps(signed(dlr(clock, status="failed", **{"err-code": "2"}))).encode()
    [event] = await hook.events(JSON, body)
    assert (event.outcome, event.reason, event.permanent) == (
        DeliveryOutcome.UNDELIVERED,
        "2",
        False,
    )
    # the same body read as a form has no sig at all
    with pytest.raises(WebhookRefusedError, match="missing"):
        await hook.events(FORM, body)


async def test_values_with_ampersands_and_equals_are_signed_with_underscores(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    params = signed(dlr(clock, **{"client-ref": "a&b=c"}))
    assert await hook.events(FORM, form(params))


async def test_the_signature_compares_case_insensitively(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    params = signed(dlr(clock))
    params["sig"] = params["sig"].upper()
    assert await hook.events(FORM, form(params))


async def test_a_tampered_field_or_a_forged_or_missing_sig_is_refused(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    tampered = {**signed(dlr(clock)), "status": "failed"}
    added = {**signed(dlr(clock)), "err-code": "3"}
    forged = signed(dlr(clock), secret="not-the-secret")
    missing = dlr(clock)
    empty = {**dlr(clock), "sig": ""}
    for params in (tampered, added, forged, missing, empty):
        with pytest.raises(WebhookRefusedError):
            await hook.events(FORM, form(params))


@pytest.mark.parametrize("age", [301, -301])
async def test_a_stale_or_future_timestamp_is_refused(
    hook: VonageWebhook, clock: FakeClock, age: int
) -> None:
    params = signed(dlr(clock, timestamp=str(int(clock.time()) - age)))
    with pytest.raises(WebhookRefusedError, match="stale"):
        await hook.events(FORM, form(params))


async def test_a_signed_receipt_without_a_timestamp_is_refused(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    params = dlr(clock)
    del params["timestamp"]
    with pytest.raises(WebhookRefusedError, match="stale"):
        await hook.events(FORM, form(signed(params)))


async def test_a_replayed_signature_is_refused_in_any_case_and_any_body_form(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    params = signed(dlr(clock))
    await hook.events(FORM, form(params))
    for headers, body in (
        (FORM, form(params)),
        (FORM, form({**params, "sig": params["sig"].upper()})),
        (JSON, json.dumps(params).encode()),
    ):
        with pytest.raises(WebhookRefusedError, match="used already"):
            await hook.events(headers, body)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("delivered", DeliveryOutcome.DELIVERED),
        ("failed", DeliveryOutcome.UNDELIVERED),
        ("rejected", DeliveryOutcome.UNDELIVERED),
        ("expired", DeliveryOutcome.UNDELIVERED),
    ],
)
async def test_final_statuses_map_to_outcomes(
    hook: VonageWebhook, clock: FakeClock, status: str, outcome: DeliveryOutcome
) -> None:
    [event] = await hook.events(FORM, form(signed(dlr(clock, status=status))))
    assert event.outcome is outcome


@pytest.mark.parametrize("status", ["accepted", "buffered", "unknown", "something-new"])
async def test_statuses_that_are_not_final_give_no_event(
    hook: VonageWebhook, clock: FakeClock, status: str
) -> None:
    assert await hook.events(FORM, form(signed(dlr(clock, status=status)))) == []


@pytest.mark.parametrize(
    ("code", "permanent"),
    [("3", True), ("4", True), ("9", True), ("1", False), ("2", False), ("6", False)],
)
async def test_only_codes_that_mean_the_number_cannot_receive_are_permanent(
    hook: VonageWebhook, clock: FakeClock, code: str, permanent: bool
) -> None:
    params = signed(dlr(clock, status="failed", **{"err-code": code}))
    [event] = await hook.events(FORM, form(params))
    assert (event.reason, event.permanent) == (code, permanent)


async def test_the_event_names_the_handset_and_the_receipts_time(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    [event] = await hook.events(FORM, form(signed(dlr(clock))))
    assert event.recipient == "+447700900000"
    expected = datetime(2026, 12, 2, 12, 10, 29, tzinfo=UTC).timestamp()
    assert event.occurred_at == expected
    [later] = await hook.events(FORM, form(signed(dlr(clock, **{"message-timestamp": "x"}))))
    assert later.occurred_at == clock.time()


async def test_the_event_id_is_stable_for_the_same_report_and_differs_by_status(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    # Vonage's retry of a report is signed anew (new nonce and timestamp)
    [first] = await hook.events(FORM, form(signed(dlr(clock))))
    [again] = await hook.events(FORM, form(signed(dlr(clock))))
    [failed] = await hook.events(FORM, form(signed(dlr(clock, status="failed"))))
    assert first.event_id == again.event_id != failed.event_id


@pytest.mark.parametrize(
    "params",
    [
        {"status": "delivered"},
        {"messageId": "0A0000001234567B"},
        {"messageId": "", "status": "delivered"},
    ],
)
async def test_a_well_signed_receipt_without_its_fields_is_a_validation_error(
    hook: VonageWebhook, clock: FakeClock, params: dict[str, Any]
) -> None:
    body = signed({"timestamp": str(int(clock.time())), **params})
    with pytest.raises(ValidationError):
        await hook.events(FORM, form(body))


@pytest.mark.parametrize(
    ("headers", "raw"),
    [
        (FORM, b"\xff\xfe garbage"),
        (JSON, b"[" * 100_000),
        (JSON, b'{"sig": 1e999999}'),
        (JSON, b'{"sig": ["a"], "messageId": {}}'),
        (JSON, b"[]"),
        (FORM, b""),
        (FORM, b"&".join(b"k%d=v" % i for i in range(1000))),
    ],
)
async def test_garbage_is_refused_as_unsigned(
    hook: VonageWebhook, headers: dict[str, str], raw: bytes
) -> None:
    with pytest.raises(WebhookRefusedError):
        await hook.events(headers, raw)


async def test_a_form_naming_a_field_twice_is_refused_even_if_one_reading_is_signed(
    hook: VonageWebhook, clock: FakeClock
) -> None:
    body = b"status=delivered&" + form(signed(dlr(clock, status="failed")))
    with pytest.raises(WebhookRefusedError, match="missing"):
        await hook.events(FORM, body)


async def test_an_unconfigured_secret_refuses_everything(clock: FakeClock) -> None:
    hook = VonageWebhook(
        signature_secret="", method="md5hash", store=MemoryStore(clock=clock), clock=clock
    )
    with pytest.raises(WebhookRefusedError, match="not configured"):
        await hook.events(FORM, form(signed(dlr(clock), secret="")))
