"""Input rules shared by every service: addresses that could turn into structure are refused."""

from __future__ import annotations

import pytest

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
