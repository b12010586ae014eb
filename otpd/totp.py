"""HOTP (RFC 4226) and TOTP (RFC 6238) with the stdlib ``hmac``: codes, time steps and
the ``otpauth://`` URI authenticator apps read."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, urlencode

__all__ = [
    "ALGORITHMS",
    "SECRET_BYTES",
    "b32_secret",
    "hotp",
    "matching_steps",
    "otpauth_uri",
    "time_step",
]

ALGORITHMS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
"""The HMAC digests RFC 6238 names, by the name the ``otpauth`` URI uses."""

SECRET_BYTES = {"SHA1": 20, "SHA256": 32, "SHA512": 64}
"""The secret length for each algorithm: its digest size (RFC 6238's test seeds)."""


def hotp(secret: bytes, counter: int, digits: int = 6, algorithm: str = "SHA1") -> str:
    """The RFC 4226 code of ``counter``: dynamic truncation of the HMAC, ``digits`` long."""
    mac = hmac.new(secret, counter.to_bytes(8, "big"), ALGORITHMS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return f"{value % 10**digits:0{digits}d}"


def time_step(now: float, period: int = 30) -> int:
    """The RFC 6238 time step ``T`` of the UNIX time ``now`` (T0 = 0)."""
    return int(now // period)


def matching_steps(
    secret: bytes,
    code: str,
    now: float,
    *,
    digits: int,
    period: int,
    algorithm: str,
    window: int,
) -> list[int]:
    """The steps within ``window`` steps of ``now`` whose code is ``code``, oldest first.

    Every step of the window is computed and compared in constant time, so the time taken
    does not say which step (if any) matched."""
    current = time_step(now, period)
    found: list[int] = []
    for step in range(current - window, current + window + 1):
        if step >= 0 and hmac.compare_digest(hotp(secret, step, digits, algorithm), code):
            found.append(step)
    return found


def b32_secret(secret: bytes) -> str:
    """The secret as authenticator apps take it: base32 without padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def otpauth_uri(
    secret: bytes,
    *,
    issuer: str,
    account_name: str,
    digits: int,
    period: int,
    algorithm: str,
) -> str:
    """The Key URI Format of Google Authenticator: ``otpauth://totp/Issuer:account?...``."""
    label = quote(f"{issuer}:{account_name}" if issuer else account_name, safe=":@")
    params = {"secret": b32_secret(secret), "algorithm": algorithm}
    if issuer:
        params["issuer"] = issuer
    params |= {"digits": str(digits), "period": str(period)}
    return f"otpauth://totp/{label}?{urlencode(params, quote_via=quote)}"
