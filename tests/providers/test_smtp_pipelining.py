"""SMTP command pipelining (RFC 2920) in the smtp provider, against a real aiosmtpd.

aiosmtpd reads pipelined commands but does not advertise PIPELINING: :class:`Relay` adds
it to the EHLO reply. A :class:`WireTap` proxy between the provider and the sink records
every chunk it forwards, so a test sees what went out in one write and counts the round
trips a message costs (each time the client, having written, waits for the server).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from otpd.clock import FakeClock
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.providers.smtp import SmtpProvider
from tests.providers.smtp_server import (
    RECIPIENT,
    SENDER,
    RecordingHandler,
    SmtpSink,
    email,
    smtp_config,
)


def _over_tls(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


class Relay(RecordingHandler):
    """The recording handler, advertising PIPELINING (or, ``tls_only``, only over TLS)
    unless ``pipelining`` is false, and counting RSETs."""

    def __init__(self, *, pipelining: bool = True, tls_only: bool = False) -> None:
        super().__init__()
        self.pipelining = pipelining
        self.tls_only = tls_only
        self.rsets = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> list[str]:
        session.host_name = hostname  # a 5-argument EHLO hook must record the greeting
        lines = list(responses)
        if self.pipelining and (_over_tls(server) or not self.tls_only):
            lines.insert(-1, "250-PIPELINING")
        return lines

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.rsets += 1
        return "250 OK"


class WireTap:
    """A TCP proxy in front of one upstream port that logs each chunk it forwards.

    :attr:`chunks` holds ``(">", data)`` for client to server, ``("<", data)`` back.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.chunks: list[tuple[str, bytes]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @classmethod
    async def start(cls, upstream: int) -> Self:
        tap = cls(upstream)
        tap._server = await asyncio.start_server(tap._serve, "127.0.0.1", 0)
        return tap

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def round_trips(self) -> int:
        """How many times the server answered after the client had written."""
        return sum(
            1
            for (before, _), (after, _) in zip(self.chunks, self.chunks[1:], strict=False)
            if before == ">" and after == "<"
        )

    def sent(self) -> list[bytes]:
        """What the client sent, chunk by chunk."""
        return [data for direction, data in self.chunks if direction == ">"]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [writer, up_writer]
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, ">")),
            asyncio.create_task(self._pump(up_reader, writer, "<")),
        ]
        self._tasks.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while data := await source.read(65536):
                self.chunks.append((direction, data))
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@asynccontextmanager
async def tapped(
    handler: RecordingHandler, tls_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[SmtpSink, WireTap]]:
    async with await SmtpSink.start(handler, tls_context=tls_context) as sink:
        tap = await WireTap.start(sink.port)
        try:
            yield sink, tap
        finally:
            await tap.aclose()


async def round_trips_of_one_warm_message(
    provider: SmtpProvider, tap: WireTap, to: str = RECIPIENT
) -> int:
    before = tap.round_trips
    await provider.send(email(to=to))
    return tap.round_trips - before


# --- what goes on the wire ----------------------------------------------------------------


async def test_with_pipelining_offered_mail_rcpt_and_data_go_out_in_one_write(
    clock: FakeClock,
) -> None:
    handler = Relay()
    async with (
        tapped(handler) as (sink, tap),
        SmtpProvider(smtp_config(tap.port), SENDER, clock) as provider,
    ):
        await provider.send(email(to="first@example.com"))
        warm = await round_trips_of_one_warm_message(provider, tap, "second@example.com")

    groups = [chunk for chunk in tap.sent() if chunk.startswith(b"MAIL FROM:")]
    assert len(groups) == 2
    assert re.fullmatch(
        rb"MAIL FROM:<no-reply@otpd\.test> SIZE=\d+\r\nRCPT TO:<first@example\.com>\r\n"
        rb"DATA\r\n",
        groups[0],
    )
    assert warm == 2  # the command group, then the body
    assert [m.rcpt_tos for m in handler.messages] == [
        ("first@example.com",),
        ("second@example.com",),
    ]
    assert handler.messages[1].parsed()["To"] == "second@example.com"
    assert sink.connections == 1
    assert handler.rsets == 0


async def test_without_pipelining_offered_each_command_waits_for_its_reply(
    clock: FakeClock,
) -> None:
    handler = Relay(pipelining=False)
    async with (
        tapped(handler) as (sink, tap),
        SmtpProvider(smtp_config(tap.port), SENDER, clock) as provider,
    ):
        await provider.send(email(to="first@example.com"))
        warm = await round_trips_of_one_warm_message(provider, tap, "second@example.com")

    [mail, _] = [chunk for chunk in tap.sent() if chunk.startswith(b"MAIL FROM:")]
    assert b"RCPT" not in mail
    assert warm == 4  # MAIL, RCPT, DATA, the body
    assert [m.rcpt_tos for m in handler.messages] == [
        ("first@example.com",),
        ("second@example.com",),
    ]
    assert sink.connections == 1


async def test_pipelining_turned_off_in_config_is_not_used_even_when_offered(
    clock: FakeClock,
) -> None:
    handler = Relay()
    async with tapped(handler) as (_, tap):
        cfg = smtp_config(tap.port, pipelining=False)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
            warm = await round_trips_of_one_warm_message(provider, tap)

    assert warm == 4
    assert len(handler.messages) == 2


async def test_pipelining_follows_the_ehlo_sent_after_starttls(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    # offered only inside TLS: pipelining proves the client read the post-STARTTLS EHLO
    handler = Relay(tls_only=True)
    async with tapped(handler, tls_context=server_tls) as (sink, tap):
        cfg = smtp_config(tap.port, tls="starttls", ca_file=ca_file)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
            warm = await round_trips_of_one_warm_message(provider, tap)

    assert warm == 2
    assert [m.tls for m in handler.messages] == [True, True]
    assert sink.connections == 1


async def test_pipelining_works_over_implicit_tls(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    handler = Relay()
    async with await SmtpSink.start(handler, tls_context=server_tls, implicit_tls=True) as sink:
        tap = await WireTap.start(sink.port)
        try:
            cfg = smtp_config(tap.port, tls="implicit", ca_file=ca_file)
            async with SmtpProvider(cfg, SENDER, clock) as provider:
                await provider.send(email())
                warm = await round_trips_of_one_warm_message(provider, tap)
        finally:
            await tap.aclose()

    assert warm == 2
    assert [m.tls for m in handler.messages] == [True, True]


async def test_pipelining_offered_only_before_starttls_is_not_used_after_it(
    server_tls: ssl.SSLContext, ca_file: str, clock: FakeClock
) -> None:
    class PlainTextOnly(Relay):
        async def handle_EHLO(
            self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
        ) -> list[str]:
            lines = await super().handle_EHLO(server, session, envelope, hostname, responses)
            return [line for line in lines if line != "250-PIPELINING" or not _over_tls(server)]

    handler = PlainTextOnly()
    async with tapped(handler, tls_context=server_tls) as (_, tap):
        cfg = smtp_config(tap.port, tls="starttls", ca_file=ca_file)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            await provider.send(email())
            warm = await round_trips_of_one_warm_message(provider, tap)

    assert warm == 4
    assert [m.tls for m in handler.messages] == [True, True]


async def test_pipelined_body_is_dot_stuffed_and_arrives_intact(clock: FakeClock) -> None:
    text = "Your code is 493817.\n.\n.. two dots\n.leading dot"
    handler = Relay()
    async with (
        await SmtpSink.start(handler) as sink,
        SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider,
    ):
        await provider.send(email(text=text, html=""))

    [got] = handler.messages
    body = got.parsed().get_body(("plain",))
    assert body is not None
    assert body.get_content().splitlines() == text.splitlines()


async def test_concurrent_pipelined_messages_each_reach_their_own_recipient(
    clock: FakeClock,
) -> None:
    handler = Relay()
    async with (
        await SmtpSink.start(handler) as sink,
        SmtpProvider(smtp_config(sink.port, pool_size=2), SENDER, clock) as provider,
    ):
        await asyncio.gather(
            *(provider.send(email(to=f"u{i}@example.com", text=f"for u{i}")) for i in range(20))
        )

    assert len(handler.messages) == 20
    for got in handler.messages:
        [to] = got.rcpt_tos
        body = got.parsed().get_body(("plain",))
        assert body is not None
        assert body.get_content().strip() == f"for {to.split('@')[0]}"
    assert sink.connections <= 2


# --- refusals: the same errors as without pipelining, and a clean session after -------------


async def refuse_then_send(
    clock: FakeClock, *, pipelining: bool, **replies: str
) -> tuple[DeliveryError, Relay, SmtpSink, WireTap]:
    """Send one message the relay refuses as scripted, then one it accepts, on one pool."""
    handler = Relay(pipelining=pipelining)
    async with (
        tapped(handler) as (sink, tap),
        SmtpProvider(smtp_config(tap.port), SENDER, clock) as provider,
    ):
        for step, reply in replies.items():
            setattr(handler, f"{step}_reply", reply)
        with pytest.raises(DeliveryError) as info:
            await provider.send(email(to="refused@example.com"))
        for step in replies:
            setattr(handler, f"{step}_reply", None)
        await provider.send(email(to="accepted@example.com"))
    return info.value, handler, sink, tap


def went_pipelined(tap: WireTap) -> bool:
    """Whether a MAIL FROM went out in one write with its DATA."""
    return any(chunk.startswith(b"MAIL FROM:") and b"DATA\r\n" in chunk for chunk in tap.sent())


def same_error(pipelined: DeliveryError, plain: DeliveryError) -> None:
    assert type(pipelined) is type(plain)
    assert (pipelined.reason, pipelined.message, pipelined.details) == (
        plain.reason,
        plain.message,
        plain.details,
    )
    assert pipelined.blames_provider == plain.blames_provider


@pytest.mark.parametrize(
    ("reply", "error", "reason"),
    [
        ("550 5.1.1 <refused@example.com>: user unknown", PermanentDeliveryError, "smtp_rcpt_5xx"),
        ("450 4.2.0 <refused@example.com>: mailbox busy", TransientDeliveryError, "smtp_4xx"),
    ],
    ids=["5xx", "4xx"],
)
async def test_rcpt_refused_in_a_pipelined_transaction_is_the_same_error_and_the_session_is_reused(
    clock: FakeClock, reply: str, error: type[DeliveryError], reason: str
) -> None:
    pipelined, handler, sink, tap = await refuse_then_send(clock, pipelining=True, rcpt=reply)
    plain, _, _, _ = await refuse_then_send(clock, pipelining=False, rcpt=reply)

    assert type(pipelined) is error
    assert pipelined.reason == reason
    assert pipelined.details["smtp_code"] == int(reply[:3])
    assert "refused@example.com" not in pipelined.message
    same_error(pipelined, plain)
    assert went_pipelined(tap)
    assert handler.rsets == 1  # the refused transaction was reset before the next one
    assert [m.rcpt_tos for m in handler.messages] == [("accepted@example.com",)]
    assert sink.connections == 1


@pytest.mark.parametrize(
    ("reply", "reason"),
    [("451 4.3.0 try again later", "smtp_4xx"), ("553 5.7.1 sender not allowed", "smtp_mail_5xx")],
    ids=["4xx", "5xx"],
)
async def test_mail_refused_in_a_pipelined_transaction_is_transient_and_the_session_is_reused(
    clock: FakeClock, reply: str, reason: str
) -> None:
    pipelined, handler, sink, tap = await refuse_then_send(clock, pipelining=True, mail=reply)
    plain, _, _, _ = await refuse_then_send(clock, pipelining=False, mail=reply)

    assert type(pipelined) is TransientDeliveryError
    assert pipelined.reason == reason
    assert pipelined.details["smtp_code"] == int(reply[:3])
    same_error(pipelined, plain)
    assert went_pipelined(tap)
    assert handler.rsets == 1
    assert [m.rcpt_tos for m in handler.messages] == [("accepted@example.com",)]
    assert sink.connections == 1


@pytest.mark.parametrize(
    ("reply", "error", "reason"),
    [
        ("554 5.6.0 message refused", PermanentDeliveryError, "smtp_data_5xx"),
        ("451 4.3.0 try again later", TransientDeliveryError, "smtp_4xx"),
    ],
    ids=["5xx", "4xx"],
)
async def test_data_refused_after_a_pipelined_envelope_is_the_same_error_and_the_session_is_reused(
    clock: FakeClock, reply: str, error: type[DeliveryError], reason: str
) -> None:
    pipelined, handler, sink, tap = await refuse_then_send(clock, pipelining=True, data=reply)
    plain, _, _, _ = await refuse_then_send(clock, pipelining=False, data=reply)

    assert type(pipelined) is error
    assert pipelined.reason == reason
    same_error(pipelined, plain)
    assert went_pipelined(tap)
    assert handler.rsets == 1
    assert [m.rcpt_tos for m in handler.messages] == [("accepted@example.com",)]
    assert sink.connections == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "plain"])
async def test_421_on_mail_is_transient_and_the_next_message_opens_a_new_connection(
    clock: FakeClock, pipelining: bool
) -> None:
    error, handler, sink, tap = await refuse_then_send(
        clock, pipelining=pipelining, mail="421 4.3.2 closing"
    )

    assert type(error) is TransientDeliveryError
    assert error.reason == "smtp_4xx"
    assert error.details["smtp_code"] == 421
    assert went_pipelined(tap) == pipelining
    assert [m.rcpt_tos for m in handler.messages] == [("accepted@example.com",)]
    assert sink.connections == 2


async def test_connection_dropped_during_pipelined_data_is_transient_and_the_next_reconnects(
    clock: FakeClock,
) -> None:
    handler = Relay()
    async with (
        await SmtpSink.start(handler) as sink,
        SmtpProvider(smtp_config(sink.port), SENDER, clock) as provider,
    ):
        handler.drop_on_data = True
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(email(to="dropped@example.com"))
        assert (await provider.health())["open"] == 0
        await provider.send(email(to="next@example.com"))

    assert info.value.reason == "smtp_disconnected"
    assert [m.rcpt_tos for m in handler.messages] == [("next@example.com",)]
    assert sink.connections == 2


async def test_pipelined_server_that_stops_answering_times_out_as_transient_and_is_dropped(
    clock: FakeClock,
) -> None:
    handler = Relay()
    handler.hold_data = asyncio.Event()
    async with await SmtpSink.start(handler) as sink:
        cfg = smtp_config(sink.port, timeout_seconds=0.2)
        async with SmtpProvider(cfg, SENDER, clock) as provider:
            with pytest.raises(TransientDeliveryError) as info:
                await provider.send(email())
            assert (await provider.health())["open"] == 0
        handler.hold_data.set()
    assert info.value.reason == "timeout"


class ScriptedRelay:
    """A bare SMTP server that offers PIPELINING, answers a command group in one write,
    and (unlike aiosmtpd) accepts DATA even when every RCPT was refused."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.commands: list[bytes] = []
        self.delivered: list[tuple[str, ...]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._session(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        pending: list[bytes] = []
        accepted: list[str] = []
        while line := await reader.readline():
            self.commands.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                pending.append(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                accepted = []
                pending.append(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                address = line.decode().partition("<")[2].partition(">")[0]
                if address in self.refuse:
                    pending.append(b"550 5.1.1 unknown\r\n")
                else:
                    accepted.append(address)
                    pending.append(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                pending.append(b"354 go ahead\r\n")
                writer.write(b"".join(pending))  # the whole group's replies in one write
                pending = []
                while await reader.readline() not in (b".\r\n", b""):
                    pass  # the body (or, after refusals, the lone dot) is not kept
                self.commands.append(b".\r\n")
                if accepted:
                    self.delivered.append(tuple(accepted))
                    pending.append(b"250 2.0.0 queued\r\n")
                else:
                    pending.append(b"554 5.5.1 no valid recipients\r\n")
            elif verb == b"RSET":
                pending.append(b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"".join(pending) + b"221 bye\r\n")
                return
            else:
                pending.append(b"502 5.5.2 unknown command\r\n")
            if verb not in (b"MAIL", b"RCPT"):
                writer.write(b"".join(pending))
                pending = []
            await writer.drain()

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def test_data_accepted_after_every_rcpt_was_refused_is_ended_empty_then_reset(
    clock: FakeClock,
) -> None:
    relay = ScriptedRelay(refuse={"refused@example.com"})
    port = await relay.start()
    try:
        async with SmtpProvider(smtp_config(port), SENDER, clock) as provider:
            with pytest.raises(PermanentDeliveryError) as info:
                await provider.send(email(to="refused@example.com"))
            await provider.send(email(to="accepted@example.com"))
    finally:
        await relay.aclose()

    assert info.value.reason == "smtp_rcpt_5xx"
    assert info.value.details["smtp_code"] == 550
    # the refused transaction: its group, an empty message, RSET; then the next one
    refused = [b"MAIL", b"RCPT", b"DATA", b".", b"RSET"]
    accepted = [b"MAIL", b"RCPT", b"DATA", b".", b"QUIT"]
    assert [c.split(b" ")[0].strip() for c in relay.commands] == [b"EHLO", *refused, *accepted]
    assert relay.delivered == [("accepted@example.com",)]
