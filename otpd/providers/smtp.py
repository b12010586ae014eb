"""Email over SMTP (aiosmtplib) through a small pool of persistent connections.

Connections are opened on demand, up to ``smtp.pool_size``, and reused across messages.
A connection that sat idle longer than ``smtp.idle_check_seconds`` answers a NOOP before
it carries a message; a broken one is dropped and replaced. Everything runs on the event
loop: aiosmtplib is always given an EHLO name and a TLS context, because without them it
calls ``socket.getfqdn`` and builds the context in a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import structlog
from aiohttp.abc import AbstractResolver
from aiosmtplib.email import parse_address

from otpd.clock import Clock
from otpd.config import EmailConfig, SmtpConfig, is_loopback
from otpd.errors import ConfigError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import Provider
from otpd.providers.dns import AsyncioResolver
from otpd.providers.mime import build_email, one_line

__all__ = ["SmtpProvider", "classify_smtp_error", "make_tls_context"]

log = structlog.get_logger("otpd.smtp")


def make_tls_context(config: SmtpConfig) -> ssl.SSLContext:
    """The client TLS context: system trust store plus ``smtp.ca_file``; verification
    (chain and host name) unless ``smtp.verify_certificate`` is false."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.ca_file:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConfigError(
                f"smtp.ca_file: cannot load {config.ca_file!r} ({type(exc).__name__})",
                details={"key": "smtp.ca_file"},
            ) from exc
    if not config.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _ehlo_name(from_address: str) -> str:
    # The sender's domain: a stable FQDN we know without a DNS lookup (socket.getfqdn
    # blocks, which is why aiosmtplib would run it in a thread).
    domain = from_address.rpartition("@")[2].strip()
    try:
        name = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        return "localhost"
    return name


def _reply_class(code: int) -> int:
    return code // 100 if 100 <= code <= 599 else 0


def _coded(cls: type[DeliveryError], message: str, reason: str, code: int) -> DeliveryError:
    error = cls(message, reason=reason)
    error.details["smtp_code"] = code
    return error


def _refused_recipients(codes: list[int]) -> DeliveryError:
    """RCPT refused: permanent only when every reply is 5xx (4xx is 'try later')."""
    code = codes[0] if codes else 0
    if codes and all(_reply_class(c) == 5 for c in codes):
        return _coded(
            PermanentDeliveryError,
            f"recipient refused by the SMTP server ({code})",
            "smtp_rcpt_5xx",
            code,
        )
    temp = next((c for c in codes if _reply_class(c) == 4), code)
    return _coded(
        TransientDeliveryError,
        f"recipient temporarily refused by the SMTP server ({temp})",
        "smtp_4xx",
        temp,
    )


# Which SMTP step failed with a 5xx, and whether that refuses the message for good.
# MAIL FROM, AUTH, EHLO and the greeting refuse *us* (configuration, reputation, quota):
# another provider may well deliver, so those fail over.
_STEPS: tuple[tuple[type[aiosmtplib.SMTPResponseException], str, bool], ...] = (
    (aiosmtplib.SMTPRecipientRefused, "rcpt", True),
    (aiosmtplib.SMTPDataError, "data", True),
    (aiosmtplib.SMTPSenderRefused, "mail", False),
    (aiosmtplib.SMTPAuthenticationError, "auth", False),
    (aiosmtplib.SMTPHeloError, "helo", False),
    (aiosmtplib.SMTPConnectResponseError, "greeting", False),
)


def classify_smtp_error(exc: BaseException) -> DeliveryError:
    """Map an aiosmtplib / ssl / socket error to a transient or permanent delivery error.

    Messages carry the reply code and the SMTP step, never the server's reply text (it
    often quotes the recipient address).
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return _refused_recipients([r.code for r in exc.recipients])
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
        step, permanent = next(
            ((s, p) for cls, s, p in _STEPS if isinstance(exc, cls)), ("command", False)
        )
        if step == "rcpt":
            return _refused_recipients([code])
        if _reply_class(code) == 4:
            return _coded(
                TransientDeliveryError,
                f"SMTP server deferred {step} ({code})",
                "smtp_4xx",
                code,
            )
        if _reply_class(code) == 5:
            cls: type[DeliveryError] = (
                PermanentDeliveryError if permanent else TransientDeliveryError
            )
            verb = "refused the message" if permanent else f"refused {step}"
            return _coded(cls, f"SMTP server {verb} ({code})", f"smtp_{step}_5xx", code)
        return _coded(
            TransientDeliveryError,
            f"unexpected SMTP reply to {step} ({code})",
            "smtp_unexpected_reply",
            code,
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return TransientDeliveryError("SMTP server timed out", reason="timeout")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientDeliveryError(
            "SMTP server closed the connection", reason="smtp_disconnected"
        )
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return TransientDeliveryError("cannot connect to the SMTP server", reason="smtp_connect")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransientDeliveryError(
            "SMTP server certificate verification failed", reason="tls_verify_failed"
        )
    if isinstance(exc, ssl.SSLError):
        return TransientDeliveryError(f"TLS error ({type(exc).__name__})", reason="tls_error")
    if isinstance(exc, TimeoutError):
        return TransientDeliveryError("SMTP server timed out", reason="timeout")
    if isinstance(exc, OSError):
        return TransientDeliveryError(f"network error ({type(exc).__name__})", reason="network")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # e.g. a non-ASCII address and no SMTPUTF8 here: another provider may take it
        return TransientDeliveryError(
            "SMTP server lacks a needed extension", reason="smtp_not_supported"
        )
    if isinstance(exc, aiosmtplib.SMTPException):
        # STARTTLS or AUTH not offered, and the like: the relay is misconfigured
        return TransientDeliveryError(f"SMTP error ({type(exc).__name__})", reason="smtp_error")
    return TransientDeliveryError(f"unexpected {type(exc).__name__}", reason="unexpected")


@dataclass(eq=False, slots=True)
class _Connection:
    smtp: aiosmtplib.SMTP
    last_used: float
    messages: int = 0


class SmtpProvider(Provider):
    """Sends email through one SMTP relay over a bounded pool of reused connections."""

    name = "smtp"
    channel = Channel.EMAIL

    def __init__(
        self,
        config: SmtpConfig,
        sender: EmailConfig,
        clock: Clock,
        resolver: AbstractResolver | None = None,
    ) -> None:
        super().__init__()
        self._resolver = resolver
        self.config = config
        self.sender = sender
        self._clock = clock
        self._ehlo_name = _ehlo_name(sender.from_address)
        self._tls_context: ssl.SSLContext | None = None
        self._slots: asyncio.Semaphore | None = None
        self._idle: deque[_Connection] = deque()
        self._live: set[_Connection] = set()
        self._waiting = 0
        self._closed = False

    async def open(self) -> None:
        cfg = self.config
        if cfg.tls != "none":
            self._tls_context = make_tls_context(cfg)
        elif cfg.username and not is_loopback(cfg.host):
            log.warning("smtp.plaintext_auth", host=cfg.host, hint="set smtp.tls to starttls")
        self._slots = asyncio.Semaphore(self.config.pool_size)
        self._closed = False

    async def aclose(self) -> None:
        """QUIT every idle connection (concurrently), then close all of them."""
        self._closed = True
        idle = list(self._idle)
        self._idle.clear()
        try:
            await asyncio.gather(*(self._quit(conn) for conn in idle))
        finally:
            for conn in list(self._live):
                self._discard(conn, "shutdown")

    def classify(self, exc: BaseException) -> DeliveryError:
        return classify_smtp_error(exc)

    async def health(self) -> dict[str, Any]:
        self._prune_idle()
        return {
            "host": self.config.host,
            "port": self.config.port,
            "tls": self.config.tls,
            "pool_size": self.config.pool_size,
            "open": len(self._live),
            "idle": len(self._idle),
            "in_use": len(self._live) - len(self._idle),
            "waiting": self._waiting,
        }

    async def _send(self, message: Message) -> SendResult:
        slots = self._slots
        if slots is None or self._closed:
            raise TransientDeliveryError("the smtp provider is not open", reason="not_open")
        recipient = _envelope_recipient(message.to)
        email = build_email(message, self.sender)
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1
        try:
            conn = await self._checkout()
            try:
                errors, _ = await conn.smtp.send_message(
                    email, sender=self.sender.from_address, recipients=[recipient]
                )
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
                # a refusal is a normal reply: aiosmtplib sent RSET, the session is reusable
                # (unless the server closed it, e.g. 421, which _checkin notices)
                self._checkin(conn)
                raise
            except BaseException as exc:
                self._discard(conn, type(exc).__name__)
                raise
            conn.messages += 1
            self._checkin(conn)
        finally:
            slots.release()
        if errors:
            # only some recipients refused: aiosmtplib returns them instead of raising
            raise _refused_recipients([reply.code for reply in errors.values()])
        return SendResult(self.name, str(email["Message-ID"]))

    async def _checkout(self) -> _Connection:
        """A healthy pooled connection, or a new one. The caller holds a slot."""
        while self._idle:
            conn = self._idle.pop()  # most recently used first: it is the least stale
            if not conn.smtp.is_connected:
                self._discard(conn, "closed_by_server")
                continue
            if self._clock.monotonic() - conn.last_used > self.config.idle_check_seconds:
                try:
                    await conn.smtp.noop()
                except Exception as exc:
                    self._discard(conn, f"noop_failed:{type(exc).__name__}")
                    continue
                except BaseException:
                    self._discard(conn, "cancelled")
                    raise
            return conn
        return await self._connect()

    async def _socket(self) -> socket.socket | None:
        """A connected socket for a relay given by name, resolved on the event loop.

        asyncio would resolve a host name with ``getaddrinfo`` on a worker thread; an IP
        literal needs no lookup, so then aiosmtplib connects by itself (``None``).
        """
        cfg = self.config
        try:
            ipaddress.ip_address(cfg.host)
        except ValueError:
            pass
        else:
            return None
        if self._resolver is None:
            self._resolver = AsyncioResolver(timeout=cfg.timeout_seconds)
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for addr in await self._resolver.resolve(cfg.host, cfg.port, socket.AF_UNSPEC):
            sock = socket.socket(addr["family"], socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(cfg.timeout_seconds):
                    await loop.sock_connect(sock, (addr["host"], cfg.port))
            except OSError as exc:  # TimeoutError included
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise last or OSError(f"no address for {cfg.host!r}")

    async def _connect(self) -> _Connection:
        cfg = self.config
        sock = await self._socket()
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=None if sock is not None else cfg.port,
            sock=sock,
            username=cfg.username or None,
            password=cfg.password if cfg.username else None,
            local_hostname=self._ehlo_name,
            timeout=cfg.timeout_seconds,
            use_tls=cfg.tls == "implicit",
            start_tls=cfg.tls == "starttls",
            validate_certs=cfg.verify_certificate,
            tls_context=self._tls_context,
        )
        await smtp.connect()  # closes itself on any failure
        conn = _Connection(smtp, self._clock.monotonic())
        self._live.add(conn)
        log.debug("smtp.connection_opened", open=len(self._live), pool_size=cfg.pool_size)
        return conn

    def _checkin(self, conn: _Connection) -> None:
        if self._closed or not conn.smtp.is_connected:
            self._discard(conn, "closed")
            return
        conn.last_used = self._clock.monotonic()
        self._idle.append(conn)

    def _discard(self, conn: _Connection, why: str) -> None:
        if conn in self._live:
            self._live.discard(conn)
            log.info("smtp.connection_dropped", why=why, messages=conn.messages)
        conn.smtp.close()

    def _prune_idle(self) -> None:
        for conn in [c for c in self._idle if not c.smtp.is_connected]:
            self._idle.remove(conn)
            self._discard(conn, "closed_by_server")

    async def _quit(self, conn: _Connection) -> None:
        try:
            await conn.smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass  # closing anyway
        finally:
            self._discard(conn, "shutdown")


def _envelope_recipient(to: str) -> str:
    """The RCPT TO address, or a permanent error: a malformed address never gets better."""
    address = ""
    if one_line(to) == to.strip():
        try:
            address = parse_address(to)
        except ValueError:
            address = ""
    if "@" not in address:
        # not chained: aiosmtplib's message quotes the address
        raise PermanentDeliveryError(
            "recipient address cannot be used in an SMTP envelope", reason="invalid_recipient"
        )
    return address
