"""The link token format: ``<owner_ref>.<secret>``.

``owner_ref`` is a keyed hash of (purpose, user id) that names the one record an owner may
have live; ``secret`` carries 32 random bytes. The store keeps only an HMAC of the whole
token, so a token never appears in a log line, a metric or a task record.
"""

from __future__ import annotations

import re

from otpd.crypto import Hasher, new_token

__all__ = ["LinkTokens"]

_OWNER_REF_HEX = 24  # 96 bits: collisions between owners are out of reach
_SECRET_BYTES = 32
# owner_ref, a dot, then secrets.token_urlsafe(32): 43 URL-safe characters
_TOKEN_RE = re.compile(rf"[0-9a-f]{{{_OWNER_REF_HEX}}}\.[A-Za-z0-9_\-]{{43}}")


class LinkTokens:
    """Makes, hashes and recognises link tokens; pure functions over the server secret."""

    def __init__(self, hasher: Hasher) -> None:
        self.hasher = hasher

    def owner_ref(self, purpose: str, user_id: str) -> str:
        return self.hasher.digest("link-owner", purpose, user_id)[:_OWNER_REF_HEX]

    def new(self, owner_ref: str) -> str:
        return f"{owner_ref}.{new_token(_SECRET_BYTES)}"

    def hash(self, purpose: str, token: str) -> str:
        return self.hasher.digest("link-token", purpose, token)

    @staticmethod
    def is_well_formed(token: str) -> bool:
        """Whether ``token`` has the shape of a token otpd issues (says nothing of its life)."""
        return _TOKEN_RE.fullmatch(token) is not None

    @staticmethod
    def owner_of(token: str) -> str:
        """The ``owner_ref`` of a well-formed token."""
        return token.partition(".")[0]
