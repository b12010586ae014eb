"""Secret values: codes, tokens and ids from ``secrets``, keyed hashes, constant-time checks."""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["Hasher", "api_key_digest", "new_code", "new_id", "new_token"]


def new_code(length: int) -> str:
    """A uniformly random decimal code of exactly ``length`` digits (leading zeros kept)."""
    return f"{secrets.randbelow(10**length):0{length}d}"


def new_token(nbytes: int = 32) -> str:
    """A URL-safe token carrying ``nbytes`` random bytes."""
    return secrets.token_urlsafe(nbytes)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def api_key_digest(key: str) -> str:
    """The SHA-256 hex digest under which an API key is listed in config."""
    return hashlib.sha256(key.encode()).hexdigest()


class Hasher:
    """HMAC-SHA256 keyed by the server secret, with domain separation.

    ``digest("otp", user_id, purpose, code)`` binds a code to its user and purpose, so a
    hash copied to another key never verifies. Parts are length-prefixed so no two
    different tuples encode the same way.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the HMAC key must be at least 32 bytes")
        # keyed once: each digest starts from a copy (the key's two hash blocks done)
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def digest(self, domain: str, *parts: str) -> str:
        framed = []
        for part in (domain, *parts):
            data = part.encode()
            framed.append(len(data).to_bytes(4, "big"))
            framed.append(data)
        mac = self._keyed.copy()
        mac.update(b"".join(framed))
        return mac.hexdigest()

    @staticmethod
    def equal(a: str, b: str) -> bool:
        return hmac.compare_digest(a.encode(), b.encode())
