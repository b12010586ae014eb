"""Encryption at rest: AES-256-GCM under a keyring that can rotate.

What otpd keeps in Redis beyond keyed hashes (a queued message holds a code or a link
token) is sealed here. A sealed value reads ``<key id>.<base64url(nonce | ciphertext)>``:
new values use the first key of the ring, older ones open with the key they name. The
associated data binds a ciphertext to what it belongs to (a task id), so a value copied
to another task does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Keyring", "SealError", "derive_key"]

_NONCE = 12
_HKDF_INFO = b"otpd at-rest encryption v1"


class SealError(Exception):
    """A sealed value that does not open: unknown key, altered, or bound elsewhere."""


def derive_key(secret: bytes) -> bytes:
    """The 32-byte key derived from the server secret with HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: str
    aead: AESGCM


class Keyring:
    """Keys newest first, each ``(id, 32 raw bytes)``; seals with the first."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        ring: list[_Key] = []
        for key_id, raw in keys:
            if len(raw) != 32:
                raise ValueError(f"encryption key {key_id!r} must be 32 bytes")
            if not key_id or "." in key_id:
                raise ValueError(f"encryption key id {key_id!r} must be non-empty, without '.'")
            ring.append(_Key(key_id, AESGCM(raw)))
        ids = [k.key_id for k in ring]
        if len(set(ids)) != len(ids):
            raise ValueError("encryption key ids must be unique")
        self._first = ring[0]
        self._by_id = {k.key_id: k for k in ring}

    @classmethod
    def from_secret(cls, secret: bytes) -> Keyring:
        """A one-key ring derived from the server secret (its id names the derivation)."""
        raw = derive_key(secret)
        return cls([("d" + hashlib.sha256(raw).hexdigest()[:8], raw)])

    @property
    def current_id(self) -> str:
        return self._first.key_id

    def seal(self, data: bytes, bound_to: str) -> str:
        nonce = secrets.token_bytes(_NONCE)
        box = self._first.aead.encrypt(nonce, data, bound_to.encode())
        return f"{self._first.key_id}.{base64.urlsafe_b64encode(nonce + box).decode()}"

    def open(self, sealed: str, bound_to: str) -> bytes:
        key_id, dot, body = sealed.partition(".")
        key = self._by_id.get(key_id)
        if not dot or key is None:
            raise SealError(f"no key {key_id!r} in the keyring")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
        except (binascii.Error, ValueError) as exc:
            raise SealError("not a sealed value") from exc
        if len(raw) <= _NONCE:
            raise SealError("not a sealed value")
        try:
            return key.aead.decrypt(raw[:_NONCE], raw[_NONCE:], bound_to.encode())
        except InvalidTag as exc:
            raise SealError("the sealed value does not open with its key") from exc
