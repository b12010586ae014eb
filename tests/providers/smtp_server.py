"""An aiosmtpd server inside the test's event loop on 127.0.0.1:0 (no Controller, no thread).

The handler records what arrived and can be told to refuse, drop or hold messages.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from otpd.config import EmailConfig, SmtpConfig
from otpd.models import Channel, Message

__all__ = ["Authenticator", "Received", "RecordingHandler", "SmtpSink"]


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    authenticated: bool

    def parsed(self) -> EmailMessage:
        msg = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


def _uses_tls(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def _is_open(session: SMTP) -> bool:
    # After a failed STARTTLS handshake aiosmtpd never sees connection_lost: look at the
    # plain transport underneath too.
    transports = (session.transport, session._original_transport)
    return session.transport is not None and not any(
        t is not None and t.is_closing() for t in transports
    )


class RecordingHandler:
    """aiosmtpd hooks: record messages and commands; scripted refusals and drops."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.mail_reply: str | None = None
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self.drop_on_data = False
        self.drop_on_noop = False
        self.hold_data: asyncio.Event | None = None
        self.held = 0
        self.noops = 0
        self.quits = 0

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold_data is not None:
            self.held += 1
            await self.hold_data.wait()
        if self.drop_on_data:
            self.drop_on_data = False
            assert server.transport is not None
            server.transport.close()
            return "421 4.3.0 dropped"  # never reaches the client
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or b""
        self.messages.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=content,
                tls=_uses_tls(server),
                authenticated=bool(session.authenticated),
            )
        )
        return "250 2.0.0 queued"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.noops += 1
        if self.drop_on_noop:
            assert server.transport is not None
            server.transport.close()
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"


class Authenticator:
    """Accepts one login/password pair (aiosmtpd ``authenticator=``)."""

    def __init__(self, login: str, password: str) -> None:
        self.login = login.encode()
        self.password = password.encode()
        self.attempts = 0

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.attempts += 1
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.login,
            self.password,
        )
        return AuthResult(success=ok, handled=False)


class SmtpSink:
    """A listening aiosmtpd server; counts the connections it accepted."""

    def __init__(self, handler: RecordingHandler) -> None:
        self.handler = handler
        self.sessions: list[SMTP] = []
        self.max_open = 0
        self._server: asyncio.Server | None = None

    @classmethod
    async def start(
        cls,
        handler: RecordingHandler | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        authenticator: Authenticator | None = None,
        auth_require_tls: bool = True,
    ) -> Self:
        sink = cls(handler or RecordingHandler())
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            session = SMTP(
                sink.handler,
                hostname="smtp.test",  # else aiosmtpd calls socket.getfqdn()
                ident="otpd-test-sink",
                tls_context=None if implicit_tls else tls_context,
                authenticator=authenticator,
                auth_require_tls=auth_require_tls,
                loop=loop,
            )
            sink.sessions.append(session)
            sink.max_open = max(sink.max_open, sink.open_connections + 1)
            return session

        sink._server = await loop.create_server(
            factory, "127.0.0.1", 0, ssl=tls_context if implicit_tls else None
        )
        return sink

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """Connections accepted since the start."""
        return len(self.sessions)

    @property
    def open_connections(self) -> int:
        return sum(1 for s in self.sessions if _is_open(s))

    def drop_all(self) -> None:
        """Close every connection from the server side, as a server restart would."""
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()

    async def wait_all_closed(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.open_connections:
                await asyncio.sleep(0.005)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        self.drop_all()
        await self.wait_all_closed()
        await server.wait_closed()


RECIPIENT = "alice@example.com"
SENDER = EmailConfig(from_address="no-reply@otpd.test", from_name="Acme Login")


def email(to: str = RECIPIENT, **fields: Any) -> Message:
    """An OTP email to ``to``, with ``fields`` replacing the defaults."""
    values: dict[str, Any] = {
        "subject": "Your sign-in code",
        "text": "Your code is 493817.",
        "html": "<p>Your code is <b>493817</b>.</p>",
        "tag": "otp_code",
    }
    values.update(fields)
    return Message(channel=Channel.EMAIL, to=to, **values)


def smtp_config(port: int, **overrides: Any) -> SmtpConfig:
    """The SMTP section for a sink on 127.0.0.1:``port``, plain unless overridden."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "timeout_seconds": 5.0,
    }
    values.update(overrides)
    return SmtpConfig(**values)
