"""Logs never carry a code, a token, a password or a full address."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from otpd.logs import configure_logging, redact_event
from otpd.redaction import mask_email, mask_phone, redact_text


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_secret_fields_are_removed_whatever_they_hold() -> None:
    event = redact_event(
        None,
        "info",
        {
            "event": "x",
            "code": "123456",
            "token": "abc.def",
            "password": "hunter2",
            "api_key": "SG.key",
            "Authorization": "Bearer k",
            "nested": {"secret": "s", "fine": 1},
        },
    )
    assert event == {
        "event": "x",
        "code": "[redacted]",
        "token": "[redacted]",
        "password": "[redacted]",
        "api_key": "[redacted]",
        "Authorization": "[redacted]",
        "nested": {"secret": "[redacted]", "fine": 1},
    }


def test_addresses_and_phones_are_masked_in_any_field_and_in_free_text() -> None:
    event = redact_event(
        None,
        "info",
        {
            "event": "sending to jane.doe@example.com and +4915123456789",
            "to": "+14155552671",
            "recipients": ["bob@example.org"],
        },
    )
    assert event["event"] == "sending to j***@example.com and +4********6789"
    assert event["to"] == "+1******2671"
    assert event["recipients"] == ["b***@example.org"]


def test_query_tokens_and_bearer_keys_in_text_are_removed() -> None:
    text = "GET /l/verify-email?token=AbC123_-x&lang=en with Bearer sk_live_abc"
    assert redact_text(text) == (
        "GET /l/verify-email?token=[redacted]&lang=en with Bearer [redacted]"
    )


def test_masking_helpers() -> None:
    assert mask_email("jane@example.com") == "j***@example.com"
    assert mask_email("nonsense") == "[redacted]"
    assert mask_phone("+1 (415) 555-2671") == "+1******2671"


def test_configured_pipeline_redacts_before_rendering_and_keeps_timestamps(
    json_logs: io.StringIO,
) -> None:
    structlog.get_logger("t").info(
        "otp.sent", code="987654", to="+14155552671", email="a.b@example.com"
    )
    [line] = lines(json_logs)
    assert "987654" not in json_logs.getvalue()
    assert line["code"] == "[redacted]"
    assert line["to"] == "+1******2671"
    assert line["email"] == "a***@example.com"
    # the phone pattern must not have eaten the ISO timestamp
    assert str(line["timestamp"]).startswith("20")
    assert str(line["timestamp"]).endswith("Z")


def test_stdlib_loggers_go_through_the_same_redaction(json_logs: io.StringIO) -> None:
    logging.getLogger("aiohttp.server").error("bad request from jane@example.com token=s3cr3t")
    [line] = lines(json_logs)
    assert line["event"] == "bad request from j***@example.com token=[redacted]"
    assert line["level"] == "error"


def test_twilio_request_logging_is_silenced_below_warning(json_logs: io.StringIO) -> None:
    logging.getLogger("twilio.http_client").info("Headers: Authorization: Basic QUM6dG9rZW4=")
    assert json_logs.getvalue() == ""


def test_exceptions_are_rendered_and_redacted(json_logs: io.StringIO) -> None:
    try:
        raise ValueError("refused for jane@example.com")
    except ValueError:
        structlog.get_logger("t").exception("boom")
    [line] = lines(json_logs)
    assert "jane@example.com" not in json_logs.getvalue()
    assert "j***@example.com" in str(line["exception"])


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("to bo!x@example.com now", "to b***@example.com now"),
        ("to jöhn.doe@bücher.example", "to j***@bücher.example"),
        ("<o'neil+tag@example.com>", "<o***@example.com>"),
        ("(a#b$c%d&e@example.com)", "(a***@example.com)"),
        ("x=?utf-8?q?a?=@example.com", "x***@example.com"),
        ("call +1 (415) 555-2671 or +14155552671", "call +1******2671 or +1******2671"),
    ],
)
def test_every_local_part_and_number_is_masked_the_same_way(text: str, masked: str) -> None:
    assert redact_text(text) == masked
