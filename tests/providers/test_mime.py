"""The email writer: bytes parsed back with the stdlib parser (``policy.default``, the one
that decodes encoded words), exact headers, literal values, 7-bit lines within limits."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import secrets
import time
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from otpd.config import EmailConfig
from otpd.models import Channel, Message
from otpd.providers import mime
from otpd.providers.mime import BuiltEmail, InvalidMessageError, build_email, one_line
from tests.providers.helpers import (
    HOSTILE,
    MESSAGE,
    MSGID,
    SENDER,
    TO,
    display_name,
    parse_email,
)

NOW = 1_800_000_000.0  # Fri, 15 Jan 2027 08:00:00 UTC
PLAIN_SENDER = EmailConfig(from_address=SENDER.from_address, from_name="Example Co")
# what a message from PLAIN_SENDER (no Reply-To) with one custom header carries
NAMES = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Auto-Submitted",
    "X-Note",
    "Content-Type",
]
ENCODED_WORD = re.compile(rb"=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=")


def message(
    *,
    subject: str = "Your sign-in code",
    text: str = "Your code is 493817",
    html: str = "<p>Your code is <b>493817</b></p>",
    headers: tuple[tuple[str, str], ...] = (("X-Note", "task-1"),),
) -> Message:
    return Message(
        channel=Channel.EMAIL,
        to=TO,
        text=text,
        subject=subject,
        html=html,
        tag="otp_code",
        headers=headers,
    )


def build(msg: Message | None = None, sender: EmailConfig = PLAIN_SENDER) -> BuiltEmail:
    return build_email(msg or message(), sender, now=NOW)


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def raw_names(data: bytes) -> list[str]:
    """Header names as written, read without the stdlib parser."""
    lines = header_block(data).split(b"\r\n")
    return [line.split(b":", 1)[0].decode() for line in lines if not line.startswith(b" ")]


def body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body((subtype,))
    assert isinstance(part, EmailMessage)
    content: str = part.get_content()
    return content


def crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def assert_wire_clean(data: bytes) -> None:
    """7-bit, CRLF only, header lines within 78 (76 with encoded words), body lines
    within 76, nothing over 998."""
    assert all(byte < 128 for byte in data)
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        assert len(line) <= (76 if ENCODED_WORD.search(line) else 78), line
    for line in rest.split(b"\r\n"):
        assert len(line) <= 76, line
        assert not line.startswith(b"From "), line


# --- the headers -------------------------------------------------------------------------


def test_headers_are_exactly_otpds_in_order_with_their_values() -> None:
    built = build(MESSAGE, SENDER)
    msg = parse_email(built.data)

    assert raw_names(built.data) == list(msg.keys())
    assert list(msg.keys()) == [
        "From",
        "To",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Auto-Submitted",
        "X-Entity-Ref-ID",
        "Content-Type",
    ]
    assert msg["From"] == "Example Co <no-reply@mail.example.org>"
    assert msg["To"] == TO
    assert msg["Reply-To"] == "help@example.org"
    assert msg["Subject"] == "Your sign-in code"
    assert msg["Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"
    assert msg["Message-ID"] == built.message_id
    assert MSGID.fullmatch(built.message_id)
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Entity-Ref-ID"] == "task-1"
    assert msg.get_content_type() == "multipart/alternative"
    assert built.data.count(b"MIME-Version:") == 1
    assert not msg.defects
    assert_wire_clean(built.data)


def test_the_plain_header_lines_are_written_as_is() -> None:
    head = header_block(build(MESSAGE, SENDER).data).decode()
    assert "\r\nSubject: Your sign-in code\r\n" in head
    assert head.startswith("From: Example Co <no-reply@mail.example.org>\r\nTo: ")


def test_reply_to_is_written_only_when_configured() -> None:
    assert "Reply-To" not in parse_email(build().data)
    assert parse_email(build(sender=SENDER).data)["Reply-To"] == SENDER.reply_to


def test_each_message_gets_its_own_message_id_and_boundary() -> None:
    first, second = build(), build()
    assert first.message_id != second.message_id
    assert parse_email(first.data).get_boundary() != parse_email(second.data).get_boundary()


def test_date_is_rfc5322_utc_from_now_or_the_wall_clock() -> None:
    assert parse_email(build_email(message(), SENDER, now=0).data)["Date"] == (
        "Thu, 01 Jan 1970 00:00:00 +0000"
    )
    when = parsedate_to_datetime(str(parse_email(build_email(message(), SENDER).data)["Date"]))
    assert abs(when.timestamp() - time.time()) < 5


# --- hostile values are text -----------------------------------------------------------

HOSTILE_VALUES = [
    HOSTILE,
    "=?utf-8?b?" + base64.b64encode(b"Hi\r\nBcc: thief@evil.test").decode() + "?=",
    "=?UTF-8?Q?x?= =?iso-8859-1?q?=0ACc:_thief@evil.test?=",
    "Hi\r\nBcc: thief@evil.test\r\nReply-To: thief@evil.test",
    "Hi\rBcc: thief@evil.test",
    "Hi\nCc: thief@evil.test\n\nbody",
    "Hi\x00Bcc: thief@evil.test",
    "Hi\u2028Bcc: thief@evil.test",
    "Hi\x85Bcc: thief@evil.test\u2029Cc: x@evil.test",
    "\r\n\r\n<script>x</script>",
    "Reply-To: thief@evil.test",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize("where", ["subject", "from_name", "header"])
def test_hostile_values_become_literal_text_never_headers(where: str, value: str) -> None:
    sender = PLAIN_SENDER
    msg = message()
    if where == "subject":
        msg = message(subject=value)
    elif where == "from_name":
        sender = dataclasses.replace(PLAIN_SENDER, from_name=value)
    else:
        msg = message(headers=(("X-Note", value),))

    built = build(msg, sender)
    parsed = parse_email(built.data)

    assert list(parsed.keys()) == NAMES
    assert raw_names(built.data) == NAMES
    for name in ("Bcc", "Cc", "Reply-To"):
        assert parsed[name] is None
    cleaned = one_line(value)
    if where == "subject":
        assert parsed["Subject"] == cleaned
    elif where == "from_name":
        [address] = parsed["From"].addresses
        assert address.addr_spec == SENDER.from_address
        assert display_name(parsed) == cleaned
    else:
        assert parsed["X-Note"] == cleaned
    assert body(parsed, "plain") == "Your code is 493817"
    assert_wire_clean(built.data)


def test_the_hostile_subject_decodes_to_the_literal_encoded_word() -> None:
    parsed = parse_email(build(message(subject=HOSTILE)).data)
    assert parsed["Subject"] == "=?utf-8?q?Hello=0D=0ABcc=3A_spam=40evil.example?="
    assert parsed["Bcc"] is None


def test_control_characters_in_values_become_single_spaces() -> None:
    assert one_line(" a\r\n b\tc\x00d\u2028e\x85f\x1bg  ") == "a b c d e f g"
    parsed = parse_email(build(message(subject="a\r\n b\tc\x00d\u2028e")).data)
    assert parsed["Subject"] == "a b c d e"


# --- non-ASCII and long values -----------------------------------------------------------


def test_non_ascii_subject_and_display_name_round_trip_exactly() -> None:
    sender = dataclasses.replace(PLAIN_SENDER, from_name='Zoë "Q" O\'Neil')
    built = build(message(subject="Überprüfung \u2013 代码"), sender)
    parsed = parse_email(built.data)

    assert parsed["Subject"] == "Überprüfung \u2013 代码"
    [address] = parsed["From"].addresses
    assert address.display_name == 'Zoë "Q" O\'Neil'
    assert address.addr_spec == SENDER.from_address
    assert b"=?utf-8?b?" in header_block(built.data)
    assert_wire_clean(built.data)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("Acme Login", "From: Acme Login <no-reply@mail.example.org>"),
        ("O'Neil & Co", "From: O'Neil & Co <no-reply@mail.example.org>"),
        ("Acme, Inc.", 'From: "Acme, Inc." <no-reply@mail.example.org>'),
        ('say "hi" \\ bye', 'From: "say \\"hi\\" \\\\ bye" <no-reply@mail.example.org>'),
        ("Support: <help@x.test>", 'From: "Support: <help@x.test>" <no-reply@mail.example.org>'),
        ("", "From: no-reply@mail.example.org"),
        (" \r\n ", "From: no-reply@mail.example.org"),
    ],
)
def test_display_names_are_atoms_quoted_strings_or_nothing(name: str, line: str) -> None:
    built = build(sender=dataclasses.replace(PLAIN_SENDER, from_name=name))
    assert header_block(built.data).split(b"\r\n")[0].decode() == line
    [address] = parse_email(built.data)["From"].addresses
    assert address.display_name == one_line(name)
    assert address.addr_spec == SENDER.from_address


def test_long_ascii_subject_is_folded_at_white_space_within_78() -> None:
    subject = " ".join(f"word{i}" for i in range(80))
    built = build(message(subject=subject))
    assert b"=?" not in header_block(built.data)
    assert parse_email(built.data)["Subject"] == subject
    assert_wire_clean(built.data)


def test_long_non_ascii_values_are_encoded_words_of_at_most_75_characters() -> None:
    subject = "Überprüfung \u2013 代码 " * 20
    name = "Zoë Ünïcödé " * 12
    built = build(message(subject=subject), dataclasses.replace(PLAIN_SENDER, from_name=name))
    parsed = parse_email(built.data)

    assert parsed["Subject"] == one_line(subject)
    assert display_name(parsed) == one_line(name)
    words = ENCODED_WORD.findall(header_block(built.data))
    assert len(words) > 10
    for word in ENCODED_WORD.finditer(header_block(built.data)):
        assert len(word.group(0)) <= 75
    assert_wire_clean(built.data)


@pytest.mark.parametrize("char", ["ü", "\u2013", "代", "😀", "e\u0301"])
def test_encoded_words_never_cut_a_character(char: str) -> None:
    subject = char * 100
    built = build(message(subject=subject))
    for payload in ENCODED_WORD.findall(header_block(built.data)):
        base64.b64decode(payload).decode("utf-8")  # each word is whole UTF-8 on its own
    assert parse_email(built.data)["Subject"] == subject


def test_a_word_too_long_for_any_line_is_encoded_rather_than_over_998() -> None:
    for subject in ("x" * 120, "x" * 3000):
        built = build(message(subject=subject))
        assert all(len(line) <= 998 for line in built.data.split(b"\r\n"))
        assert parse_email(built.data)["Subject"] == subject
    # a word that fits in 998 stays plain, on one line
    assert b"Subject: " + b"x" * 120 + b"\r\n" in build(message(subject="x" * 120)).data
    assert b"=?utf-8?b?" in header_block(build(message(subject="x" * 3000)).data)


def test_empty_subject_is_an_empty_header() -> None:
    built = build(message(subject=""))
    assert b"\r\nSubject:\r\n" in built.data
    assert parse_email(built.data)["Subject"] == ""


# --- bodies ----------------------------------------------------------------------------

TRICKY_BODY = (
    "Grüße \u2013 代码 😀\n"
    ".\n"
    ".leading dot\n"
    "From the team\n"
    "trailing spaces   \n"
    "tab\tand = sign and =?utf-8?q?x?=\n"
    + "long line " * 40
    + "\r\nold mac\rline\r\n"
    + "From " * 30
    + "\n"
    "\x00\x1b control\n"
    "no newline at the end"
)


def test_text_and_html_bodies_round_trip_exactly_7bit() -> None:
    html = f"<p>{TRICKY_BODY}</p>\n"
    built = build(message(text=TRICKY_BODY, html=html))
    parsed = parse_email(built.data)

    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
        assert part["MIME-Version"] is None
    assert body(parsed, "plain") == crlf(TRICKY_BODY)
    assert body(parsed, "html") == crlf(html)
    assert_wire_clean(built.data)


def test_the_html_part_does_not_repeat_mime_version() -> None:
    built = build()
    boundary = parse_email(built.data).get_boundary()
    assert boundary is not None
    _, *parts = built.data.split(f"--{boundary}".encode())
    assert len(parts) == 3  # text, html, the closing "--"
    text_head, html_head = (part.split(b"\r\n\r\n", 1)[0] for part in parts[:2])
    assert html_head == b"\r\nContent-Type: text/html; charset=utf-8\r\n" + (
        b"Content-Transfer-Encoding: quoted-printable"
    )
    assert b"MIME-Version" not in text_head
    assert built.data.count(b"MIME-Version:") == 1
    assert header_block(built.data).count(b"\r\nMIME-Version: 1.0\r\n") == 1


SHORT_NON_ASCII = "Grüße!\n验证码: 493817 ✅\nÅrhus, Øresund\n"


@pytest.mark.parametrize("html", ["<p>Grüße!</p>\n<p>验证码: <b>493817</b></p>\n", ""])
def test_non_ascii_text_with_short_lines_is_7bit_quoted_printable(html: str) -> None:
    # short lines of UTF-8 are where a writer picks 8bit; otpd's output stays 7-bit
    built = build(message(subject="Grüße", text=SHORT_NON_ASCII, html=html))
    assert all(byte < 0x80 for byte in built.data)
    parsed = parse_email(built.data)
    leaves = [part for part in parsed.walk() if not part.is_multipart()]
    assert len(leaves) == (2 if html else 1)
    for part in leaves:
        assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert body(parsed, "plain") == crlf(SHORT_NON_ASCII)
    if html:
        assert body(parsed, "html") == crlf(html)
    assert_wire_clean(built.data)


def test_without_html_the_message_is_one_text_plain_part() -> None:
    for text in (TRICKY_BODY, "ends with a newline\n", "", "x"):
        built = build(message(text=text, html=""))
        parsed = parse_email(built.data)
        assert list(parsed.keys()) == [*NAMES[:-1], "Content-Type", "Content-Transfer-Encoding"]
        assert parsed.get_content_type() == "text/plain"
        assert parsed.get_content_charset() == "utf-8"
        assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
        assert parsed.get_content() == crlf(text)
        assert built.data.endswith(b"\r\n")
        assert_wire_clean(built.data)


def test_a_body_holding_boundary_lines_keeps_its_text() -> None:
    other = build()
    boundary = parse_email(other.data).get_boundary()
    assert boundary is not None
    text = f"--{boundary}\n--{boundary}--\n--=_otpd_\n" + other.data.decode()
    built = build(message(text=text, html=text))
    parsed = parse_email(built.data)

    assert parsed.get_boundary() != boundary
    assert len(list(parsed.iter_parts())) == 2
    assert body(parsed, "plain") == crlf(text)
    assert body(parsed, "html") == crlf(text)


def test_a_boundary_found_in_a_body_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = iter(["a" * 24, "b" * 24])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(drawn))
    assert mime._boundary(b"x=_otpd_" + b"a" * 24) == b"=_otpd_" + b"b" * 24


# --- what cannot be written --------------------------------------------------------------

BAD_ADDRESSES = [
    "",
    "jane.doe",
    "jane@",
    "@example.com",
    "jane@doe@example.com",
    "Jane <jane@example.com>",
    "<jane@example.com>",
    "jane@example.com, thief@evil.test",
    "jane@example.com\r\nBcc: thief@evil.test",
    "jane@example.com\x00",
    "jane doe@example.com",
    " jane@example.com",
    "jané@example.com",
    "jane@exämple.com",
    '"jane"@example.com',
    "jane(comment)@example.com",
    "jane@[192.0.2.1]",
    "jane\\@example.com",
    "=?utf-8?q?jane?=@example.com",
    "jane;x@example.com",
    "j" * 250 + "@example.com",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
@pytest.mark.parametrize("field", ["to", "from_address", "reply_to"])
def test_an_address_that_is_not_one_plain_addr_spec_is_refused(field: str, address: str) -> None:
    msg, sender = message(), SENDER
    if field == "to":
        msg = dataclasses.replace(msg, to=address)
    else:
        sender = EmailConfig(
            from_address=SENDER.from_address, reply_to=SENDER.reply_to, from_name="x"
        )
        object.__setattr__(sender, field, address)  # past EmailConfig's own check
    if field == "reply_to" and not address:
        build(msg, sender)  # no Reply-To at all is fine
        return
    with pytest.raises(InvalidMessageError) as caught:
        build(msg, sender)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    if address:
        assert address not in str(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "X Note",
        "X:Note",
        "X-Ünicode",
        "X-Note\r\nBcc",
        "X-Note\x00",
        "x" * 80,
        "Bcc",
        "cc",
        "To",
        "FROM",
        "reply-to",
        "Subject",
        "Date",
        "Message-Id",
        "MIME-Version",
        "Auto-Submitted",
        "Sender",
        "Content-Type",
        "content-transfer-encoding",
        "Content-Disposition",
        "Resent-To",
    ],
)
def test_a_custom_header_name_that_is_not_a_free_field_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        build(message(headers=(("X-Fine", "yes"), (name, "value"))))
    assert caught.value.field == "header"


def test_custom_headers_keep_their_order_and_names() -> None:
    headers = (("X-Entity-Ref-ID", "task-1"), ("List-Id", "<otp.example.org>"), ("x-b", "2"))
    parsed = parse_email(build(message(headers=headers)).data)
    assert list(parsed.keys())[7:10] == ["X-Entity-Ref-ID", "List-Id", "x-b"]
    assert [parsed[name] for name, _ in headers] == ["task-1", "<otp.example.org>", "2"]


# --- any text at all -------------------------------------------------------------------

# any text, and text made mostly of what is structure in a header: specials, quotes,
# controls, white space, encoded-word delimiters
STRUCTURE = st.sampled_from(list(' \t\r\n"\\()<>[],;:@.=?_-abX\x00\x85\u2028\u00e9\u4ee3'))
ANY_TEXT = (
    st.text()
    | st.text(STRUCTURE)
    | st.text(st.characters(max_codepoint=0x7F), min_size=60, max_size=400)
    | st.text(min_size=60, max_size=400)
    | st.lists(
        st.sampled_from(["From ", ".", "=", "\u00e9", "x" * 7, " ", "\t", "\n", "\r\n"])
    ).map("".join)
)
FIELD_NAME = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=20,
).map(lambda name: f"X-{name}")


@settings(max_examples=300, deadline=None)
@given(
    subject=ANY_TEXT,
    from_name=ANY_TEXT,
    headers=st.lists(st.tuples(FIELD_NAME, ANY_TEXT), max_size=3, unique_by=lambda h: h[0].lower()),
    text=ANY_TEXT,
    html=ANY_TEXT,
)
def test_any_text_parses_back_to_the_same_headers_and_bodies(
    subject: str, from_name: str, headers: list[tuple[str, str]], text: str, html: str
) -> None:
    sender = dataclasses.replace(PLAIN_SENDER, from_name=from_name)
    built = build(message(subject=subject, headers=tuple(headers), text=text, html=html), sender)
    parsed = parse_email(built.data)

    content = ["Content-Type"] if html else ["Content-Type", "Content-Transfer-Encoding"]
    names = [*NAMES[:7], *(name for name, _ in headers), *content]
    assert list(parsed.keys()) == names
    assert raw_names(built.data) == names
    assert parsed["Subject"] == one_line(subject)
    [address] = parsed["From"].addresses
    assert address.addr_spec == SENDER.from_address
    assert display_name(parsed) == one_line(from_name)
    for name, value in headers:
        assert parsed[name] == one_line(value)
    assert body(parsed, "plain") == crlf(text)
    if html:
        assert body(parsed, "html") == crlf(html)
    assert all(len(line) <= 998 for line in built.data.split(b"\r\n"))
    assert all(byte < 128 for byte in built.data)


# lines around the 76-character limit, ending in white space or not, some starting "From "
def _edge_lines(ends: list[str], min_size: int, max_size: int) -> st.SearchStrategy[str]:
    line = st.tuples(
        st.sampled_from(["", "From ", "=", "."]),
        st.integers(min_value=60, max_value=160),
        st.sampled_from(ends),
    ).map(lambda part: part[0] + "x" * (part[1] - len(part[0])) + part[2])
    return st.lists(line, min_size=min_size, max_size=max_size).map("\n".join)


EDGE_LINES = _edge_lines(["", " ", "\t", "  ", "=", "\u00e9"], 1, 4)
# printable ASCII past 1 KiB: the writer's own passes rather than b2a_qp
EDGE_ASCII = _edge_lines(["", " ", "\t", "  ", "=", "."], 18, 30)


@settings(max_examples=300, deadline=None)
@given(text=EDGE_LINES | EDGE_ASCII | ANY_TEXT)
@example(text="x" * 75 + " \nnext")  # b2a_qp alone: 77 characters
@example(text="x" * 76)  # the closing soft break of a text without a final newline
@example(text="x" * 2000 + " ")  # the same, past 1 KiB
def test_any_body_is_quoted_printable_of_lines_within_76_characters(text: str) -> None:
    built = build(message(text=text, html=""))
    # 77 characters were written for 75 and a space (stdlib's b2a_qp), and for a last line
    # of 76 and the soft break that ends a text without a newline (RFC 2045 6.7 rule 5)
    assert_wire_clean(built.data)
    _, _, encoded = built.data.partition(b"\r\n\r\n")
    assert binascii.a2b_qp(encoded) == crlf(text).encode("utf-8", "replace")
    lines = encoded.split(b"\r\n")
    assert b"." not in lines  # SMTP's end of data, were it not dot-stuffed
    assert not any(line.endswith((b" ", b"\t")) for line in lines)
