"""Keyed hashes: the bytes they are taken over, which stored hashes depend on."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otpd.crypto import Hasher

SECRET = b"s" * 32


def framed(*parts: str) -> bytes:
    """Each part as a 4-byte big-endian length and its UTF-8 bytes."""
    out = b""
    for part in parts:
        data = part.encode()
        out += len(data).to_bytes(4, "big") + data
    return out


def test_a_digest_is_the_hmac_sha256_of_its_length_prefixed_parts() -> None:
    expected = hmac.new(SECRET, framed("otp", "u1", "login", "123456"), "sha256").hexdigest()
    assert Hasher(SECRET).digest("otp", "u1", "login", "123456") == expected


@given(st.lists(st.lists(st.text(max_size=20), max_size=4), min_size=1, max_size=5))
def test_each_digest_stands_alone_whatever_came_before(calls: list[list[str]]) -> None:
    hasher = Hasher(SECRET)
    for parts in calls:  # one hasher, many digests: none carries into the next
        want = hmac.new(SECRET, framed("d", *parts), hashlib.sha256).hexdigest()
        assert hasher.digest("d", *parts) == want


def test_parts_that_join_to_the_same_text_hash_apart() -> None:
    hasher = Hasher(SECRET)
    assert hasher.digest("d", "ab", "c") != hasher.digest("d", "a", "bc")
    assert hasher.digest("d", "abc") != hasher.digest("da", "bc")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Hasher(b"x" * 31)
