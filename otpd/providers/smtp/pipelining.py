"""One mail transaction over an aiosmtplib session, pipelined (RFC 2920) when offered.

aiosmtplib 5.1 waits for the reply to each of MAIL, RCPT and DATA under its command lock:
four round trips per message on a warm connection. When the server's last EHLO (the one
after STARTTLS: aiosmtplib forgets the extensions once TLS is up) advertises PIPELINING,
:func:`send_mail` writes MAIL FROM, every RCPT TO and DATA at once, reads their replies
in order, then sends the dot-stuffed body and reads the final reply: two round trips.

Failures raise the same aiosmtplib exceptions, with the same precedence, as
:meth:`aiosmtplib.SMTP.sendmail`, and the session is left the same way (RSET after a
refusal, closed after a 421, a timeout or a lost connection), so
:func:`~otpd.providers.smtp.errors.classify_smtp_error` and the pool treat both paths alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.email import parse_address, quote_address
from aiosmtplib.protocol import normalize_message_line_endings

__all__ = ["send_mail"]

_MAX_PENDING = 32 * 1024  # bytes without a complete reply: aiosmtplib's bound on one reply
_PERIOD = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # what aiosmtplib refuses in a command argument
_COMPLETED, _WILL_FORWARD, _START_INPUT, _CLOSING = 250, 251, 354, 421


async def send_mail(
    smtp: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    pipelining: bool = True,
) -> tuple[dict[str, SMTPResponse], str]:
    """What :meth:`aiosmtplib.SMTP.sendmail` does, pipelined if allowed and offered.

    Returns the refused recipients (when some were accepted) and the final reply's text.
    """
    await _greet(smtp)
    if not (pipelining and smtp.supports_extension("pipelining")):
        return await smtp.sendmail(sender, recipients, message)
    return await _send_pipelined(smtp, sender, recipients, message)


async def _greet(smtp: aiosmtplib.SMTP) -> None:
    """EHLO (HELO if refused) unless this session already greeted, as sendmail would."""
    if not smtp.is_ehlo_or_helo_needed:
        return
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not smtp.is_connected:
            raise
        await smtp.helo()


def _command(*args: bytes) -> bytes:
    if any(_CONTROL.search(arg) for arg in args):
        raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


async def _send_pipelined(
    smtp: aiosmtplib.SMTP, sender: str, recipients: Sequence[str], message: bytes
) -> tuple[dict[str, SMTPResponse], str]:
    # Everything that can fail before a byte is sent fails here, as in sendmail.
    parse_address(sender)
    for recipient in recipients:
        parse_address(recipient)
    body = normalize_message_line_endings(message)
    options = [f"SIZE={len(body)}".encode("ascii")] if smtp.supports_extension("size") else []
    group = [_command(b"MAIL", b"FROM:" + quote_address(sender).encode("ascii"), *options)]
    group += [_command(b"RCPT", b"TO:" + quote_address(r).encode("ascii")) for r in recipients]
    group.append(b"DATA\r\n")
    body = _PERIOD.sub(b"..", body) + b".\r\n"

    refused: list[aiosmtplib.SMTPRecipientRefused] = []
    refusal: aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused | None = None
    final = SMTPResponse(-1, "")
    async with _Exchange(smtp) as exchange:
        replies, lost = await exchange.send(b"".join(group), len(group))

        try:
            _check_envelope(replies, lost, sender, recipients, refused)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
            refusal = exc
            if len(replies) == len(group) and replies[-1].code == _START_INPUT:
                # the server takes data even so: end it empty (RFC 2920 3.1), then RSET
                await exchange.send(b".\r\n", 1)
        else:
            replies, lost = await exchange.send(body, 1)
            if lost is not None:
                raise lost
            final = replies[0]
            if final.code != _COMPLETED:
                refusal = aiosmtplib.SMTPDataError(final.code, final.message)
    if refusal is not None:
        # as in sendmail: a failing RSET is not the error worth reporting
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await smtp.rset()
        raise refusal
    return {e.recipient: SMTPResponse(e.code, e.message) for e in refused}, final.message


def _check_envelope(
    replies: list[SMTPResponse],
    lost: aiosmtplib.SMTPException | None,
    sender: str,
    recipients: Sequence[str],
    refused: list[aiosmtplib.SMTPRecipientRefused],
) -> None:
    """Raise what sendmail raises for these replies to MAIL, each RCPT and DATA, in its
    order; collect the refused recipients. A reply never read raises why it was not."""

    def reply(index: int) -> SMTPResponse:
        if index < len(replies):
            return replies[index]
        assert lost is not None
        raise lost

    mail = reply(0)
    if mail.code != _COMPLETED:
        raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender)
    for index, recipient in enumerate(recipients, start=1):
        got = reply(index)
        if got.code not in (_COMPLETED, _WILL_FORWARD):
            refused.append(aiosmtplib.SMTPRecipientRefused(got.code, got.message, recipient))
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(refused)
    data = reply(len(recipients) + 1)
    if data.code != _START_INPUT:
        raise aiosmtplib.SMTPDataError(data.code, data.message)


class _Exchange:
    """Takes the session's transport from aiosmtplib's protocol for one pipelined exchange.

    aiosmtplib's protocol parses one reply per command and drops bytes that arrive while
    a parsed reply waits to be picked up, so several replies in flight would be lost:
    :class:`_ReplyReader` stands in for it and hands it the connection's fate.
    """

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self._smtp = smtp
        protocol, transport = smtp.protocol, smtp.transport
        if protocol is None or transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        if not isinstance(transport, asyncio.WriteTransport):
            raise TypeError(f"Transport {transport!r} does not support writing.")
        self._protocol = protocol
        self._transport = transport
        self._reader = _ReplyReader(protocol, smtp.timeout)

    async def __aenter__(self) -> _Exchange:
        self._transport.set_protocol(self._reader)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._transport.set_protocol(self._protocol)

    async def send(
        self, data: bytes, count: int
    ) -> tuple[list[SMTPResponse], aiosmtplib.SMTPException | None]:
        """Write ``data`` in one go and read ``count`` replies.

        Returns the replies read and, if fewer than ``count``, why: the session is then
        closed, since a later reply could be mistaken for the answer to a later command.
        """
        replies: list[SMTPResponse] = []
        try:
            self._write(data)
            while len(replies) < count:
                replies.append(await self._reader.next_reply())
                _closing_early(replies[-1], more=len(replies) < count)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            self._smtp.close()
            return replies, exc
        except aiosmtplib.SMTPResponseException as exc:  # a malformed or endless reply
            self._smtp.close()
            return replies, exc
        return replies, None

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._transport.write(data)


def _closing_early(reply: SMTPResponse, *, more: bool) -> None:
    if reply.code == _CLOSING and more:
        # the server is closing the session: aiosmtplib closes it too, and its next
        # command finds no connection
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")


class _ReplyReader(asyncio.Protocol):
    """Keeps every byte the server sends and splits it into replies, in order.

    Connection events go on to aiosmtplib's protocol, so the session still learns that
    the server went away.
    """

    def __init__(self, protocol: asyncio.Protocol, timeout: float | None) -> None:
        self._protocol = protocol
        self._timeout = timeout
        self._buffer = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        self._error: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def next_reply(self) -> SMTPResponse:
        """The next reply, waiting at most the session's timeout for it."""
        try:
            async with asyncio.timeout(self._timeout):
                while not self._replies:
                    if self._error is not None:
                        raise self._error
                    self._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
        except aiosmtplib.SMTPException:
            raise
        except TimeoutError as exc:
            raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
        return self._replies.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: aiosmtplib.SMTPException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except aiosmtplib.SMTPResponseException as exc:
            self._buffer.clear()
            self._fail(exc)
        if len(self._buffer) > _MAX_PENDING:
            self._buffer.clear()
            self._fail(aiosmtplib.SMTPResponseException(-1, "Response too long"))
        self._wake()

    def _parse(self) -> SMTPResponse | None:
        """The first complete reply in the buffer, removed from it; None if there is none."""
        lines: list[bytes] = []
        offset = 0
        while (end := self._buffer.find(b"\n", offset)) != -1:
            line = bytes(self._buffer[offset : end + 1])
            offset = end + 1
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", errors="ignore")
                raise aiosmtplib.SMTPResponseException(
                    -1, f"Malformed SMTP response line: {text}"
                ) from None
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape"))
        return None

    def eof_received(self) -> bool | None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return self._protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        error = aiosmtplib.SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()
