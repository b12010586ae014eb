"""RFC 5322 / MIME messages written byte by byte, 7-bit clean, where a header value is
always text and never structure.

The stdlib ``email`` package is not used to build messages: with ``policy.default`` it
decodes RFC 2047 encoded words found in a value, so a subject such as
``=?utf-8?q?a=0D=0ABcc:_x@evil.example?=`` became a real ``Bcc:`` line, and it costs
about a millisecond and a half per message. Here every value is cleaned (control
characters become spaces), then either written as plain ASCII or, when it is not ASCII or
could be read as an encoded word, as base64 encoded words of its whole text.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from dataclasses import dataclass

from otpd.config import EmailConfig
from otpd.models import Message

__all__ = ["BuiltEmail", "InvalidMessageError", "build_email", "custom_header_name", "one_line"]

# RFC 5322 2.1.1: lines SHOULD stay within 78 characters and MUST within 998. RFC 2047 2:
# an encoded word is at most 75 characters, a line holding one at most 76.
_LINE = 78
_MAX_LINE = 998
_EW_LINE = 76
_EW_MAX = 75
_EW_OVERHEAD = len("=?utf-8?b??=")
_EW_MAX_BYTES = (_EW_MAX - _EW_OVERHEAD) // 4 * 3
_MAX_NAME = _EW_LINE - len(": ") - 20  # room left for one short encoded word
_MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3, less the angle brackets

# RFC 5322 3.2.3 atext, plus the space between words: written as is in a display name.
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]+")
# An addr-spec otpd can write: one "@", printable ASCII, none of the specials that would
# make it structure (RFC 5322 3.2.3) or that need quoting.
_ADDRESS_PART = re.compile(r"[\x21-\x7e]+")
_ADDRESS_SPECIALS = frozenset('<>()[],;:"\\@')
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 3.6.8 ftext

# The headers otpd writes itself, and those a reader parses as addresses or MIME
# structure: a custom header may never add or replace one.
_RESERVED = frozenset(
    {
        "from",
        "to",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "auto-submitted",
        "cc",
        "bcc",
        "sender",
        "return-path",
    }
)
_RESERVED_PREFIXES = ("content-", "resent-")

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_TEXT_PART = b"Content-Type: text/plain; charset=utf-8\r\n"
_HTML_PART = b"Content-Type: text/html; charset=utf-8\r\n"
_QP = b"Content-Transfer-Encoding: quoted-printable\r\n"


class InvalidMessageError(ValueError):
    """An address or header name that cannot be written into an email safely.

    ``field`` says which part (``to``, ``from_address``, ``reply_to``, ``header``); the
    message never quotes the value, which may be personal data.
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class BuiltEmail:
    """A complete message: ``data`` with CRLF line endings, 7-bit, and its Message-ID."""

    data: bytes
    message_id: str


def one_line(value: str) -> str:
    """Fold CR, LF and other control characters to spaces: header values are one line.

    Every character Python does not count as printable (controls, format characters,
    line and paragraph separators, lone surrogates) becomes a space; runs of whitespace
    become one space and the ends are stripped.
    """
    if value.isascii() and value.isprintable():
        return " ".join(value.split())
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())


def _needs_encoding(text: str) -> bool:
    return not text.isascii() or "=?" in text


def _encoded_words(text: str, first: int) -> list[str]:
    """``text`` as base64 encoded words, cut between characters; the first word fits in
    ``first`` characters when that holds one character, every other one in 75."""
    data = text.encode()
    room = (first - _EW_OVERHEAD) // 4 * 3
    limit = room if room >= 4 else _EW_MAX_BYTES
    words: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a UTF-8 sequence
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
        limit = _EW_MAX_BYTES
    return words


def _fold(name: str, tokens: list[str], limit: int) -> str:
    """``name: tokens`` joined by single spaces, a line break before a token that would
    pass ``limit`` (unfolding gives the single space back). Never right after the colon:
    readers keep that break's space as part of the value."""
    lines: list[str] = []
    line = f"{name}: {tokens[0]}"
    for token in tokens[1:]:
        if len(line) + 1 + len(token) > limit:
            lines.append(line)
            line = ""
        line = f"{line} {token}"
    lines.append(line)
    return "\r\n".join(lines)


def _too_long(folded: str) -> bool:
    return any(len(line) > _MAX_LINE for line in folded.split("\r\n"))


def _text_header(name: str, value: str) -> str:
    """An unstructured header (RFC 5322 3.2.5): the cleaned value, plain or encoded."""
    text = one_line(value)
    if not text:
        return f"{name}:"
    if not _needs_encoding(text):
        folded = _fold(name, text.split(" "), _LINE)
        if not _too_long(folded):
            return folded
    return _fold(name, _encoded_words(text, _EW_LINE - len(name) - 2), _EW_LINE)


def _address(value: str, field: str) -> str:
    """``value`` when it is one plain ASCII addr-spec, else :class:`InvalidMessageError`."""
    local, sep, domain = value.partition("@")
    if (
        not sep
        or len(value) > _MAX_ADDRESS
        or "=?" in value
        or not _ADDRESS_PART.fullmatch(local)
        or not _ADDRESS_PART.fullmatch(domain)
        or not _ADDRESS_SPECIALS.isdisjoint(local)
        or not _ADDRESS_SPECIALS.isdisjoint(domain)
    ):
        raise InvalidMessageError(f"{field} is not a plain email address", field=field)
    return value


def _mailbox_header(name: str, display_name: str, address: str) -> str:
    """``name: display name <address>`` (RFC 5322 3.4), the name an atom sequence, a
    quoted-string or encoded words (RFC 2047 5(3))."""
    text = one_line(display_name)
    if not text:
        return f"{name}: {address}"
    angle = f"<{address}>"
    if not _needs_encoding(text):
        if not _ATOMS.fullmatch(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        folded = _fold(name, [*text.split(" "), angle], _LINE)
        if not _too_long(folded):
            return folded
        text = one_line(display_name)
    words = _encoded_words(text, _EW_LINE - len(name) - 2)
    return _fold(name, [*words, angle], _EW_LINE)


def custom_header_name(name: str) -> str:
    """``name`` when a custom header may carry it, else :class:`InvalidMessageError`.

    Every email provider applies this rule, so no custom header can add or replace a
    header otpd writes itself (``Auto-Submitted`` among them) or MIME structure.
    """
    if (
        len(name) > _MAX_NAME
        or not _FIELD_NAME.fullmatch(name)
        or name.lower() in _RESERVED
        or name.lower().startswith(_RESERVED_PREFIXES)
    ):
        raise InvalidMessageError(
            "a custom header name is not a field name otpd may write", field="header"
        )
    return name


def _date(now: float) -> str:
    """RFC 5322 3.3 date-time in UTC (``+0000``)."""
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


# Quoted-printable (RFC 2045 6.7): bytes other than printable ASCII, tab and the line
# breaks are written as "=XX" (rules 1 to 3), and so is white space at a line end; a line
# is at most 76 characters, the "=" of a soft line break included (rule 5).
_QP_MAX = 76
_QP_SHORT = 1024  # bytes: a shorter text goes to b2a_qp whatever it holds
_QP_PLAIN = bytes(range(0x20, 0x7F)) + b"\t\n"
_QP_TRAILING = re.compile(rb"[\t ](?=\n|\Z)")
_QP_FROM = re.compile(rb"^From ", re.MULTILINE)
_QP_DOT = re.compile(rb"^\.$", re.MULTILINE)


def _quoted_printable(text: str, *, closed: bool = False) -> bytes:
    """``text`` as quoted-printable with CRLF line endings: 7-bit, lines of at most 76
    characters never cut inside an ``=XX``; white space at a line end, a lone ``.`` (SMTP's
    end of data) and ``From `` at a line start (which mbox writers change) are encoded.
    ``closed``: the result ends with CRLF, by a soft line break when the text has no final
    newline (the end of a message's only part, which adds no line to the text).

    A text of printable ASCII past 1 KiB (most of an English template) takes a few
    C-level passes, most of them only a search; a shorter one, or one with other bytes
    (another language), is escaped by ``binascii.b2a_qp``, in C too. Either way only lines
    past 76 characters are cut in Python: b2a_qp writes 77 characters for a 75-character
    line that ends in a space."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8", "replace")
    if len(data) < _QP_SHORT or data.translate(None, _QP_PLAIN):
        # every byte past ASCII an "=XX" of its own: b2a_qp's loop beats a regex callback
        # (and its one pass beats several searches over a short text)
        data = binascii.b2a_qp(data, istext=True)  # LF line ends in, LF line ends out
    else:
        if b"=" in data:
            data = data.replace(b"=", b"=3D")  # from here on every "=" begins an "=XX"
        # (a search for one byte is far quicker than one for two: a tab is looked for first)
        tab_end = b"\t" in data and b"\t\n" in data
        if tab_end or b" \n" in data or data.endswith((b" ", b"\t")):
            data = _QP_TRAILING.sub(_qp_escape, data)
    if b"From " in data:
        data = _QP_FROM.sub(b"=46rom ", data)
    lines = data.split(b"\n")
    if b"." in lines:
        data = _QP_DOT.sub(b"=2E", data)
        lines = data.split(b"\n")
    if closed and data and not data.endswith(b"\n"):
        lines[-1] += b"="
        lines.append(b"")
    if max(map(len, lines)) > _QP_MAX:
        return b"\r\n".join([line if len(line) <= _QP_MAX else _qp_fold(line) for line in lines])
    return b"\r\n".join(lines)


def _qp_escape(match: re.Match[bytes]) -> bytes:
    return b"=%02X" % match[0][0]


def _qp_fold(line: bytes) -> bytes:
    """An encoded line past 76 characters as soft-broken lines (CRLF ends) of at most 75
    characters and an ``=``: never cut within an ``=XX``, and no piece begins with
    ``From `` (a piece is at least two characters, so none is a lone ``.``)."""
    pieces = []
    start = 0
    while len(line) - start > _QP_MAX:
        cut = start + _QP_MAX - 1
        while True:
            escape = line.rfind(b"=", cut - 2, cut)  # an "=XX" the cut would split
            if escape >= 0:
                cut = escape
            elif line.startswith(b"From ", cut):
                cut -= 1
            else:
                break
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return b"=\r\n".join(pieces)


def _boundary(*bodies: bytes) -> bytes:
    # "=_" cannot occur in quoted-printable output; the check is for certainty anyway
    while True:
        boundary = f"=_otpd_{secrets.token_hex(12)}".encode("ascii")
        if not any(boundary in body for body in bodies):
            return boundary


def build_email(message: Message, sender: EmailConfig, *, now: float | None = None) -> BuiltEmail:
    """``message`` from ``sender`` as RFC 5322 bytes: multipart/alternative (text, then
    HTML) when it has HTML, else one text/plain part; both quoted-printable UTF-8.

    Raises :class:`InvalidMessageError` for an address that is not a plain addr-spec and
    for a custom header name that is not a field name or names a header otpd writes.
    """
    from_address = _address(sender.from_address, "from_address")
    to = _address(message.to, "to")
    domain = from_address.partition("@")[2]
    message_id = f"<{secrets.token_hex(16)}@{domain}>"
    headers = [
        _mailbox_header("From", sender.from_name, from_address),
        f"To: {to}",
    ]
    if sender.reply_to:
        headers.append(f"Reply-To: {_address(sender.reply_to, 'reply_to')}")
    headers += [
        _text_header("Subject", message.subject),
        f"Date: {_date(time.time() if now is None else now)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-generated",
    ]
    headers += [_text_header(custom_header_name(name), value) for name, value in message.headers]
    text = _quoted_printable(message.text, closed=not message.html)
    if message.html:
        html = _quoted_printable(message.html)
        boundary = _boundary(text, html)
        headers.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary.decode()}"')
        delimiter = b"\r\n--" + boundary
        body = b"".join(
            (
                delimiter[2:],
                b"\r\n",
                _TEXT_PART,
                _QP,
                b"\r\n",
                text,
                delimiter,
                b"\r\n",
                _HTML_PART,
                _QP,
                b"\r\n",
                html,
                delimiter,
                b"--\r\n",
            )
        )
    else:
        headers.append("Content-Type: text/plain; charset=utf-8")
        headers.append("Content-Transfer-Encoding: quoted-printable")
        body = text
    head = "\r\n".join(headers).encode("ascii")
    return BuiltEmail(head + b"\r\n\r\n" + body, message_id)
