"""Input rules shared by every service: addresses that could turn into structure are refused."""

from __future__ import annotations

import idna
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from otpd.config.checks import mailbox
from otpd.errors import ValidationError
from otpd.validation import normalize_email


@pytest.mark.parametrize(
    "address",
    [
        "=?utf-8?q?x=0D=0A?=@example.com",  # an encoded word: RFC 2047 forbids it here
        "=?utf-8?b?YUBiLmM=?=@example.com",
        "a\r\nBcc: evil@example.net@example.com",
        "a\r@example.com",
        "a\n@example.com",
        "a\x00b@example.com",
        "a\u2028b@example.com",
        "a b@example.com",
        '"quoted"@example.com',
        "a(comment)@example.com",
        "<a@example.com>",
        "Jane <a@example.com>",
        "a@example.com, b@example.com",
        "a@[192.0.2.1]",
        "a@localhost",
        "a@example.123",
        "a@-example.com",
        "a@example-.com",
        "a@exa_mple.com",
        "a@example..com",
        ".a@example.com",
        "a.@example.com",
        "a..b@example.com",
        "jöhn@example.com",  # a non-ASCII local part needs SMTPUTF8 everywhere
        "a@",
        "@example.com",
        "a" * 65 + "@example.com",
        "a@" + ".".join(["b" * 63] * 4) + ".com",
        "",
    ],
)
def test_addresses_that_are_not_one_plain_mailbox_are_refused(address: str) -> None:
    with pytest.raises(ValidationError) as info:
        normalize_email(address)
    assert set(info.value.fields) == {"email"}


@pytest.mark.parametrize(
    ("address", "normalized"),
    [
        ("Ada@Example.COM", "Ada@example.com"),
        ("  ada@example.com ", "ada@example.com"),
        ("ada+tag@sub.example.co.uk", "ada+tag@sub.example.co.uk"),
        ("o'neil@example.com", "o'neil@example.com"),
        ("ada@bücher.example", "ada@xn--bcher-kva.example"),
        ("ada@BÜCHER.example", "ada@xn--bcher-kva.example"),
        ("ada@xn--bcher-kva.example", "ada@xn--bcher-kva.example"),
        ("a" * 64 + "@example.com", "a" * 64 + "@example.com"),
    ],
)
def test_valid_addresses_are_normalised(address: str, normalized: str) -> None:
    assert normalize_email(address) == normalized


def _domain_by_idna(domain: str) -> str | None:
    try:
        return idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        return None


_HOSTS = st.lists(
    st.text(alphabet="aZ09-_.ü", max_size=12) | st.sampled_from(["xn--bcher-kva", "xn--", "ab--c"]),
    min_size=1,
    max_size=4,
).map(".".join)


@given(_HOSTS)
@example("Example.COM")
@example("xn--bcher-kva.example")
@example("xn--zz.example")
@example("ab--cd.example")
@example("exa_mple.com")
@example("example.com.")
def test_a_plain_host_name_is_read_as_idna_reads_it(domain: str) -> None:
    """The ASCII fast path of :func:`mailbox` gives what IDNA gives for every domain."""
    by_idna = _domain_by_idna(domain)
    found = mailbox(f"a@{domain}")
    if found is not None:
        assert found == f"a@{by_idna}"
    else:  # refused: by IDNA, or by the host name rules after it
        assert by_idna is None or mailbox(f"a@{by_idna}") is None
