"""The smtp email provider against a real aiosmtpd server in the test's event loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtplib import SMTPResponse

from otpd.clock import FakeClock
from otpd.config import EmailConfig
from otpd.errors import ConfigError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel
from otpd.providers.smtp import SmtpProvider, classify_smtp_error
from tests.conftest import free_port
from tests.providers.helpers import (
    TO,
    assert_hostile_email_arrived_as_text,
    build_from_config,
    hostile_message,
    hostile_sender,
)
from tests.providers.smtp_server import (
    RECIPIENT,
    SENDER,
    Authenticator,
    RecordingHandler,
    SmtpSink,
    email,
    smtp_config,
)


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait for socket events to be processed (not for time to pass)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def wait_for_health(provider: SmtpProvider, **expected: Any) -> None:
    async with asyncio.timeout(5.0):
        while True:
            health = await provider.health()
            if all(health[key] == value for key, value in expected.items()):
                return
            await asyncio.sleep(0.005)


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
async def sink(handler: RecordingHandler) -> AsyncIterator[SmtpSink]:
    async with await SmtpSink.start(handler) as server:
        yield server


@pytest.fixture(scope="session")
def untrusted_server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


# --- delivery and the message on the wire -------------------------------------------


async def test_delivered_email_has_text_and_html_parts_message_id_date_and_named_from(
    sink: SmtpSink, clock: FakeClock
) -> None:
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        result = await provider.send(email())

    [got] = sink.handler.messages
    assert got.mail_from == "no-reply@otpd.test"
    assert got.rcpt_tos == (RECIPIENT,)
    msg = got.parsed()
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "493817" in text.get_content()
    assert "<b>493817</b>" in html.get_content()
    assert msg["Message-ID"] == result.message_id
    assert msg["Message-ID"].endswith("@otpd.test>")
    assert msg["Date"]
    assert msg["From"] == "Acme Login <no-reply@otpd.test>"
    assert msg["To"] == RECIPIENT
    assert msg["Subject"] == "Your sign-in code"
    assert result.provider == "smtp"


@pytest.mark.parametrize("html", ["<p>Your code is <b>493817</b>.</p>", ""], ids=["html", "text"])
async def test_every_email_arrives_marked_auto_submitted(
    sink: SmtpSink, clock: FakeClock, html: str
) -> None:
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        await provider.send(email(html=html))

    [got] = sink.handler.messages
    # RFC 3834 5.1: "auto-generated", once, in the header block the server received
    header_block = got.content.split(b"\r\n\r\n", 1)[0]
    assert header_block.count(b"\r\nAuto-Submitted: auto-generated\r\n") == 1
    assert got.parsed().get_all("Auto-Submitted") == ["auto-generated"]


async def test_crlf_in_subject_and_from_name_cannot_inject_headers_end_to_end(
    sink: SmtpSink, clock: FakeClock
) -> None:
    sender = EmailConfig(
        from_address="no-reply@otpd.test", from_name="Acme\r\nBcc: thief@evil.test"
    )
    subject = "Hello\r\nBcc: thief@evil.test\r\nX-Injected: yes\n\nbody?"
    async with SmtpProvider(smtp_config(sink.port), sender, clock) as provider:
        await provider.send(email(subject=subject))

    [got] = sink.handler.messages
    assert got.rcpt_tos == (RECIPIENT,)
    msg = got.parsed()
    assert msg["Bcc"] is None
    assert msg["X-Injected"] is None
    assert msg["Subject"] == "Hello Bcc: thief@evil.test X-Injected: yes body?"
    assert msg["From"].addresses[0].display_name == "Acme Bcc: thief@evil.test"
    assert msg["From"].addresses[0].addr_spec == "no-reply@otpd.test"
    header_block = got.content.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in header_block
    assert b"\nX-Injected:" not in header_block


@pytest.mark.parametrize("html", [True, False], ids=["multipart", "text-only"])
async def test_encoded_words_in_subject_from_name_and_header_arrive_as_literal_text(
    sink: SmtpSink, clock: FakeClock, html: bool
) -> None:
    async with SmtpProvider(smtp_config(sink.port), hostile_sender(), clock) as provider:
        result = await provider.send(hostile_message(html=html))

    [got] = sink.handler.messages
    assert got.rcpt_tos == (TO,)
    msg = assert_hostile_email_arrived_as_text(got.content, html=html)
    assert msg["Message-ID"] == result.message_id


async def test_recipient_with_line_break_is_refused_permanently_before_connecting(
    sink: SmtpSink, clock: FakeClock
) -> None:
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        with pytest.raises(PermanentDeliveryError) as info:
            await provider.send(email(to="alice@example.com\r\nRCPT TO:<thief@evil.test>"))
    assert info.value.reason == "invalid_recipient"
    assert "alice" not in info.value.message
    assert sink.connections == 0


# --- the pool ---------------------------------------------------------------------------


async def test_sequential_messages_reuse_one_connection(sink: SmtpSink, clock: FakeClock) -> None:
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        for i in range(5):
            await provider.send(email(to=f"user{i}@example.com"))
        health = await provider.health()

    assert len(sink.handler.messages) == 5
    assert sink.connections == 1
    assert health["open"] == 1
    assert health["idle"] == 1


async def test_twenty_concurrent_messages_through_a_pool_of_two_use_at_most_two_connections(
    sink: SmtpSink, clock: FakeClock
) -> None:
    cfg = smtp_config(sink.port, pool_size=2)
    async with SmtpProvider(cfg, SENDER, clock) as provider:
        await asyncio.gather(*(provider.send(email(to=f"u{i}@example.com")) for i in range(20)))
        health = await provider.health()

    assert len(sink.handler.messages) == 20
    assert sink.connections <= 2
    assert sink.max_open <= 2
    assert health["open"] <= 2


async def test_health_reports_connections_in_use_and_senders_waiting_for_a_slot(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    handler.hold_data = asyncio.Event()
    async with SmtpProvider(smtp_config(sink.port, pool_size=2), SENDER, clock) as provider:
        sends = [asyncio.create_task(provider.send(email())) for _ in range(3)]
        await eventually(lambda: handler.held == 2)
        busy = await provider.health()
        handler.hold_data.set()
        await asyncio.gather(*sends)
        done = await provider.health()

    assert busy == {
        "host": "127.0.0.1",
        "port": sink.port,
        "tls": "none",
        "pool_size": 2,
        "open": 2,
        "idle": 0,
        "in_use": 2,
        "waiting": 1,
    }
    assert (done["open"], done["idle"], done["in_use"], done["waiting"]) == (2, 2, 0, 0)
    assert sink.connections == 2


async def test_connection_dropped_mid_message_raises_transient_and_next_message_reconnects(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        await provider.send(email(to="first@example.com"))
        handler.drop_on_data = True
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(email(to="second@example.com"))
        assert (await provider.health())["open"] == 0
        await provider.send(email(to="third@example.com"))

    assert info.value.reason == "smtp_disconnected"
    assert info.value.provider == "smtp"
    assert [m.rcpt_tos for m in handler.messages] == [
        ("first@example.com",),
        ("third@example.com",),
    ]
    assert sink.connections == 2


async def test_idle_connection_closed_by_the_server_is_replaced(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        await provider.send(email())
        sink.drop_all()
        await wait_for_health(provider, open=0)  # the client saw the EOF
        await provider.send(email())

    assert len(handler.messages) == 2
    assert sink.connections == 2


async def test_connection_idle_longer_than_idle_check_is_noop_checked_before_reuse(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    cfg = smtp_config(sink.port, idle_check_seconds=30)
    async with SmtpProvider(cfg, SENDER, clock) as provider:
        await provider.send(email())
        clock.advance(29)
        await provider.send(email())
        assert handler.noops == 0
        clock.advance(31)
        await provider.send(email())
        assert handler.noops == 1

    assert len(handler.messages) == 3
    assert sink.connections == 1


async def test_connection_failing_its_noop_check_is_discarded_and_replaced(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    cfg = smtp_config(sink.port, idle_check_seconds=30)
    async with SmtpProvider(cfg, SENDER, clock) as provider:
        await provider.send(email())
        handler.drop_on_noop = True
        clock.advance(60)
        await provider.send(email())
        health = await provider.health()

    assert handler.noops == 1
    assert len(handler.messages) == 2
    assert sink.connections == 2
    assert health["open"] == 1


async def test_aclose_quits_and_closes_every_pooled_connection(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    handler.hold_data = asyncio.Event()
    provider = SmtpProvider(smtp_config(sink.port, pool_size=3), SENDER, clock)
    async with provider:
        sends = [asyncio.create_task(provider.send(email())) for _ in range(3)]
        await eventually(lambda: handler.held == 3)
        handler.hold_data.set()
        await asyncio.gather(*sends)
        assert sink.open_connections == 3

    assert handler.quits == 3
    await sink.wait_all_closed()
    assert await provider.health() == {
        "host": "127.0.0.1",
        "port": sink.port,
        "tls": "none",
        "pool_size": 3,
        "open": 0,
        "idle": 0,
        "in_use": 0,
        "waiting": 0,
    }
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(email())
    assert info.value.reason == "not_open"


# --- refusals and failures --------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error", "reason"),
    [
        ("550 5.1.1 <alice@example.com>: user unknown", PermanentDeliveryError, "smtp_rcpt_5xx"),
        ("450 4.2.0 <alice@example.com>: mailbox busy", TransientDeliveryError, "smtp_4xx"),
    ],
)
async def test_rcpt_5xx_is_permanent_and_4xx_transient_and_the_connection_is_kept(
    sink: SmtpSink,
    handler: RecordingHandler,
    clock: FakeClock,
    reply: str,
    error: type[DeliveryError],
    reason: str,
) -> None:
    handler.rcpt_reply = reply
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        with pytest.raises(DeliveryError) as info:
            await provider.send(email())
        handler.rcpt_reply = None
        await provider.send(email())

    assert type(info.value) is error
    assert info.value.reason == reason
    assert info.value.details["smtp_code"] == int(reply[:3])
    assert RECIPIENT not in info.value.message
    assert RECIPIENT not in repr(info.value.details)
    assert sink.connections == 1
    assert len(handler.messages) == 1


@pytest.mark.parametrize(
    ("reply", "error", "reason"),
    [
        ("554 5.6.0 message refused", PermanentDeliveryError, "smtp_data_5xx"),
        ("451 4.3.0 try again later", TransientDeliveryError, "smtp_4xx"),
    ],
)
async def test_data_5xx_is_permanent_and_4xx_transient(
    sink: SmtpSink,
    handler: RecordingHandler,
    clock: FakeClock,
    reply: str,
    error: type[DeliveryError],
    reason: str,
) -> None:
    handler.data_reply = reply
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        with pytest.raises(DeliveryError) as info:
            await provider.send(email())

    assert type(info.value) is error
    assert info.value.reason == reason
    assert info.value.details["smtp_code"] == int(reply[:3])


async def test_mail_from_5xx_is_transient_so_the_chain_fails_over(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    handler.mail_reply = "553 5.7.1 sender not allowed"
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(email())

    assert info.value.reason == "smtp_mail_5xx"
    assert info.value.details["smtp_code"] == 553


async def test_partially_refused_recipients_returned_without_an_exception_are_an_error(
    sink: SmtpSink, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(
        self: aiosmtplib.SMTP, *args: Any, **kwargs: Any
    ) -> tuple[dict[str, SMTPResponse], str]:
        return {RECIPIENT: SMTPResponse(550, f"<{RECIPIENT}> unknown")}, "250 ok"

    monkeypatch.setattr(aiosmtplib.SMTP, "sendmail", refused)
    async with SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider:
        with pytest.raises(PermanentDeliveryError) as info:
            await provider.send(email())

    assert info.value.reason == "smtp_rcpt_5xx"
    assert RECIPIENT not in info.value.message


async def test_nothing_listening_is_a_transient_connect_error(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with SmtpProvider(smtp_config(port), SENDER, clock) as provider:
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(email())
        assert (await provider.health())["open"] == 0
    assert info.value.reason == "smtp_connect"


async def test_server_that_stops_answering_times_out_as_transient_and_is_dropped(
    sink: SmtpSink, handler: RecordingHandler, clock: FakeClock
) -> None:
    handler.hold_data = asyncio.Event()
    cfg = smtp_config(sink.port, timeout_seconds=0.2)
    async with SmtpProvider(cfg, SENDER, clock) as provider:
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(email())
        assert (await provider.health())["open"] == 0
    handler.hold_data.set()
    assert info.value.reason == "timeout"


# --- TLS and AUTH -----------------------------------------------------------------------


async def test_starttls_with_the_ca_file_trusted_delivers_over_tls(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    async with await SmtpSink.start(tls_context=server_tls) as sink:
        cfg = smtp_config(sink.port, tls="starttls", ca_file=ca_file)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
            await provider.send(email())
    assert [m.tls for m in sink.handler.messages] == [True, True]
    assert sink.connections == 1


async def test_implicit_tls_with_the_ca_file_trusted_delivers_over_tls(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    async with await SmtpSink.start(tls_context=server_tls, implicit_tls=True) as sink:
        cfg = smtp_config(sink.port, tls="implicit", ca_file=ca_file)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
    assert [m.tls for m in sink.handler.messages] == [True]


async def test_starttls_against_an_untrusted_certificate_fails_verification_as_transient(
    untrusted_server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    async with await SmtpSink.start(tls_context=untrusted_server_tls) as sink:
        cfg = smtp_config(sink.port, tls="starttls", ca_file=ca_file)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            with pytest.raises(TransientDeliveryError) as info:
                await provider.send(email())
            assert (await provider.health())["open"] == 0
    assert info.value.reason == "tls_verify_failed"
    assert sink.handler.messages == []


async def test_certificate_checks_can_be_turned_off_explicitly(
    untrusted_server_tls: ssl.SSLContext, clock: FakeClock
) -> None:
    async with await SmtpSink.start(tls_context=untrusted_server_tls) as sink:
        cfg = smtp_config(sink.port, tls="starttls", verify_certificate=False)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
    assert [m.tls for m in sink.handler.messages] == [True]


async def test_starttls_is_forced_even_when_the_server_does_not_offer_it(
    sink: SmtpSink, clock: FakeClock
) -> None:
    async with SmtpProvider(smtp_config(sink.port, tls="starttls"), SENDER, clock) as provider:
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(email())
    assert info.value.reason == "smtp_error"
    assert sink.handler.messages == []


async def test_unreadable_ca_file_is_a_config_error_naming_the_key(
    tmp_path: Path, clock: FakeClock
) -> None:
    cfg = smtp_config(2525, tls="starttls", ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"^smtp\.ca_file: "):
        async with SmtpProvider(cfg, SENDER, clock):
            pass


async def test_auth_over_a_plain_connection_logs_in_when_a_username_is_set(
    clock: FakeClock,
) -> None:
    auth = Authenticator("mailer", "s3cret-pass")
    async with await SmtpSink.start(authenticator=auth, auth_require_tls=False) as sink:
        cfg = smtp_config(sink.port, username="mailer", password="s3cret-pass")
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
            await provider.send(email())
    assert [m.authenticated for m in sink.handler.messages] == [True, True]
    assert auth.attempts == 1


async def test_auth_over_starttls_logs_in(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    auth = Authenticator("mailer", "s3cret-pass")
    async with await SmtpSink.start(tls_context=server_tls, authenticator=auth) as sink:
        cfg = smtp_config(
            sink.port, tls="starttls", ca_file=ca_file, username="mailer", password="s3cret-pass"
        )
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
    [got] = sink.handler.messages
    assert got.tls
    assert got.authenticated


async def test_wrong_password_is_a_transient_auth_failure(clock: FakeClock) -> None:
    auth = Authenticator("mailer", "s3cret-pass")
    async with await SmtpSink.start(authenticator=auth, auth_require_tls=False) as sink:
        cfg = smtp_config(sink.port, username="mailer", password="wrong")
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            with pytest.raises(TransientDeliveryError) as info:
                await provider.send(email())
            assert (await provider.health())["open"] == 0
    assert info.value.reason == "smtp_auth_5xx"
    assert info.value.details["smtp_code"] == 535
    assert sink.handler.messages == []


async def test_provider_starts_no_threads_for_ehlo_name_tls_or_auth(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    before = set(threading.enumerate())
    auth = Authenticator("mailer", "s3cret-pass")
    async with await SmtpSink.start(tls_context=server_tls, authenticator=auth) as sink:
        cfg = smtp_config(
            sink.port, tls="starttls", ca_file=ca_file, username="mailer", password="s3cret-pass"
        )
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await asyncio.gather(*(provider.send(email()) for _ in range(4)))
    assert len(sink.handler.messages) == 4
    assert set(threading.enumerate()) == before


# --- classification and wiring ----------------------------------------------------------


def _refused(*codes: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(c, "no", f"r{i}@example.com") for i, c in enumerate(codes)]
    )


@pytest.mark.parametrize(
    ("exc", "error", "reason"),
    [
        (_refused(550), PermanentDeliveryError, "smtp_rcpt_5xx"),
        (_refused(551, 553), PermanentDeliveryError, "smtp_rcpt_5xx"),
        (_refused(450), TransientDeliveryError, "smtp_4xx"),
        (_refused(550, 452), TransientDeliveryError, "smtp_4xx"),
        (
            aiosmtplib.SMTPRecipientRefused(550, "no", "a@b.c"),
            PermanentDeliveryError,
            "smtp_rcpt_5xx",
        ),
        (aiosmtplib.SMTPRecipientRefused(451, "no", "a@b.c"), TransientDeliveryError, "smtp_4xx"),
        (aiosmtplib.SMTPDataError(554, "no"), PermanentDeliveryError, "smtp_data_5xx"),
        (aiosmtplib.SMTPDataError(452, "full"), TransientDeliveryError, "smtp_4xx"),
        (aiosmtplib.SMTPSenderRefused(550, "no", "x@y.z"), TransientDeliveryError, "smtp_mail_5xx"),
        (aiosmtplib.SMTPSenderRefused(421, "later", "x@y.z"), TransientDeliveryError, "smtp_4xx"),
        (aiosmtplib.SMTPAuthenticationError(535, "bad"), TransientDeliveryError, "smtp_auth_5xx"),
        (aiosmtplib.SMTPAuthenticationError(454, "tmp"), TransientDeliveryError, "smtp_4xx"),
        (aiosmtplib.SMTPHeloError(501, "bad"), TransientDeliveryError, "smtp_helo_5xx"),
        (
            aiosmtplib.SMTPConnectResponseError(554, "go"),
            TransientDeliveryError,
            "smtp_greeting_5xx",
        ),
        (aiosmtplib.SMTPResponseException(421, "bye"), TransientDeliveryError, "smtp_4xx"),
        (aiosmtplib.SMTPResponseException(502, "no"), TransientDeliveryError, "smtp_command_5xx"),
        (
            aiosmtplib.SMTPResponseException(-1, "?"),
            TransientDeliveryError,
            "smtp_unexpected_reply",
        ),
        (aiosmtplib.SMTPServerDisconnected("gone"), TransientDeliveryError, "smtp_disconnected"),
        (aiosmtplib.SMTPConnectError("refused"), TransientDeliveryError, "smtp_connect"),
        (aiosmtplib.SMTPConnectTimeoutError("slow"), TransientDeliveryError, "timeout"),
        (aiosmtplib.SMTPReadTimeoutError("slow"), TransientDeliveryError, "timeout"),
        (ssl.SSLCertVerificationError("bad cert"), TransientDeliveryError, "tls_verify_failed"),
        (ssl.SSLError("handshake"), TransientDeliveryError, "tls_error"),
        (TimeoutError(), TransientDeliveryError, "timeout"),
        (ConnectionResetError(), TransientDeliveryError, "network"),
        (OSError("unreachable"), TransientDeliveryError, "network"),
        (aiosmtplib.SMTPNotSupported("no SMTPUTF8"), TransientDeliveryError, "smtp_not_supported"),
        (aiosmtplib.SMTPException("no STARTTLS"), TransientDeliveryError, "smtp_error"),
        (RuntimeError("?"), TransientDeliveryError, "unexpected"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_classify_maps_every_smtp_error_explicitly(
    exc: BaseException, error: type[DeliveryError], reason: str
) -> None:
    got = classify_smtp_error(exc)
    assert type(got) is error
    assert got.reason == reason
    assert "@" not in got.message


async def test_registry_builds_the_smtp_provider_from_config(clock: FakeClock) -> None:
    data = {"email": {"providers": ["smtp", "outbox"]}, "smtp": {"pool_size": 3}}
    providers = build_from_config(Channel.EMAIL, data, clock=clock)
    assert [p.name for p in providers] == ["smtp", "outbox"]
    smtp = providers[0]
    assert isinstance(smtp, SmtpProvider)
    assert smtp.config.pool_size == 3


async def test_relay_given_by_name_is_resolved_on_the_loop_without_threads(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    # "localhost" resolves from /etc/hosts through otpd's resolver, the TLS check still
    # uses the name, and asyncio's getaddrinfo thread is never needed.
    before = set(threading.enumerate())
    async with await SmtpSink.start(tls_context=server_tls) as sink:
        cfg = smtp_config(sink.port, host="localhost", tls="starttls", ca_file=ca_file)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await asyncio.gather(*(provider.send(email()) for _ in range(3)))
    assert len(sink.handler.messages) == 3
    assert set(threading.enumerate()) == before


async def test_relay_name_that_does_not_resolve_is_transient(clock: FakeClock) -> None:
    from otpd.providers.dns import AsyncioResolver

    cfg = smtp_config(25, host="relay.invalid", timeout_seconds=1.0)
    resolver = AsyncioResolver(nameservers=["127.0.0.1"], port=free_port(), hosts={}, timeout=0.5)
    async with SmtpProvider(cfg, SENDER, clock, resolver) as provider:
        with pytest.raises(TransientDeliveryError):
            await provider.send(email())
