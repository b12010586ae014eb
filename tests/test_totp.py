"""The TOTP and HOTP algorithm against the RFCs' own test vectors."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from otpd.totp import SECRET_BYTES, b32_secret, hotp, matching_steps, otpauth_uri, time_step

SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}

# RFC 6238 Appendix B: (time, algorithm, 8-digit code)
RFC6238 = [
    (59, "SHA1", "94287082"),
    (59, "SHA256", "46119246"),
    (59, "SHA512", "90693936"),
    (1111111109, "SHA1", "07081804"),
    (1111111109, "SHA256", "68084774"),
    (1111111109, "SHA512", "25091201"),
    (1111111111, "SHA1", "14050471"),
    (1111111111, "SHA256", "67062674"),
    (1111111111, "SHA512", "99943326"),
    (1234567890, "SHA1", "89005924"),
    (1234567890, "SHA256", "91819424"),
    (1234567890, "SHA512", "93441116"),
    (2000000000, "SHA1", "69279037"),
    (2000000000, "SHA256", "90698825"),
    (2000000000, "SHA512", "38618901"),
    (20000000000, "SHA1", "65353130"),
    (20000000000, "SHA256", "77737706"),
    (20000000000, "SHA512", "47863826"),
]

# RFC 4226 Appendix D: HOTP-SHA1, 6 digits, counters 0 to 9
RFC4226 = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]


@pytest.mark.parametrize(("t", "algorithm", "code"), RFC6238)
def test_rfc6238_appendix_b_vectors(t: int, algorithm: str, code: str) -> None:
    seed = SEEDS[algorithm]
    assert len(seed) == SECRET_BYTES[algorithm]
    assert hotp(seed, time_step(t, 30), 8, algorithm) == code


@pytest.mark.parametrize(("counter", "code"), list(enumerate(RFC4226)))
def test_rfc4226_appendix_d_vectors(counter: int, code: str) -> None:
    assert hotp(SEEDS["SHA1"], counter, 6, "SHA1") == code


def test_matching_steps_finds_the_code_within_the_window_only() -> None:
    seed = SEEDS["SHA1"]
    now = 1_800_000_000.0
    step = time_step(now)

    def found(code: str) -> list[int]:
        return matching_steps(seed, code, now, digits=6, period=30, algorithm="SHA1", window=1)

    assert found(hotp(seed, step - 1)) == [step - 1]
    assert found(hotp(seed, step + 1)) == [step + 1]
    assert found(hotp(seed, step + 2)) == []


def test_otpauth_uri_carries_the_base32_secret_and_parameters() -> None:
    seed = SEEDS["SHA1"]
    uri = otpauth_uri(
        seed,
        issuer="Acme Co",
        account_name="jane@example.com",
        digits=6,
        period=30,
        algorithm="SHA1",
    )
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert unquote(parts.path) == "/Acme Co:jane@example.com"
    query = parse_qs(parts.query)
    assert query["secret"] == [b32_secret(seed)]
    assert base64.b32decode(query["secret"][0] + "=" * (-len(query["secret"][0]) % 8)) == seed
    assert query["issuer"] == ["Acme Co"]
    assert query["algorithm"] == ["SHA1"]
    assert query["digits"] == ["6"]
    assert query["period"] == ["30"]
