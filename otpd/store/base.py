"""The store interface every backend implements, and the values it speaks in.

Callers name what they count or keep (a user, a purpose, a bucket); how that becomes
keys is each backend's own business (:mod:`otpd.store.keys` for the built-in ones).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Protocol, Self

from otpd.models import TaskRecord, VerifyResult

__all__ = [
    "TOKEN_FIELDS",
    "Bucket",
    "BucketKind",
    "Claim",
    "ClaimState",
    "Limit",
    "LimitExceeded",
    "OtpRecord",
    "Store",
    "TokenCheck",
    "TokenOutcome",
    "TokenRecord",
    "VerifyOutcome",
]


class BucketKind(enum.StrEnum):
    """Whose hits a limit counts; backends may group keys by it (a cluster's hash tags)."""

    USER = "u"
    IP = "ip"
    ADDRESS = "a"
    GLOBAL = "g"


@dataclass(frozen=True, slots=True)
class Bucket:
    """What one limit counts: ``Bucket.user("42", "otp")``, ``Bucket.shared("email_send")``.

    ``subject`` is a user id, an IP address, a keyed hash of an address or number (never
    the address itself), or a name shared by everyone (``GLOBAL``).
    """

    kind: BucketKind
    subject: str
    action: str = ""

    @classmethod
    def user(cls, user_id: str, action: str) -> Bucket:
        return cls(BucketKind.USER, user_id, action)

    @classmethod
    def ip(cls, client_ip: str, action: str) -> Bucket:
        return cls(BucketKind.IP, client_ip, action)

    @classmethod
    def address(cls, address_hash: str, action: str) -> Bucket:
        return cls(BucketKind.ADDRESS, address_hash, action)

    @classmethod
    def shared(cls, name: str) -> Bucket:
        return cls(BucketKind.GLOBAL, name)


@dataclass(frozen=True, slots=True)
class Limit:
    """A sliding-window limit: at most ``limit`` hits in ``bucket`` within ``window`` seconds.

    ``scope`` names the limit in errors and metrics (``user_hour``, ``ip_hour``). A
    ``distinct`` limit counts different members instead of hits: a member already seen in
    the window always passes (``at most 10 different numbers per range``). ``member``
    overrides the member of the call for this limit (a distinct limit names what it
    counts: the hashed number), so limits of different kinds can go in one atomic call.
    """

    scope: str
    bucket: Bucket
    limit: int
    window: int
    distinct: bool = False
    member: str = ""


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """The limit that refused a request, and when a retry can succeed (seconds)."""

    scope: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class OtpRecord:
    """What is stored for an issued code: its keyed hash and audit fields, never the code."""

    otp_id: str
    code_hash: str
    channel: str
    purpose: str
    created_at: float
    expires_at: float
    max_attempts: int
    client_ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class VerifyOutcome:
    result: VerifyResult
    otp_id: str = ""
    channel: str = ""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What is stored for a link token: its keyed hash, owner and audit fields, never the
    token itself."""

    token_id: str
    token_hash: str
    purpose: str
    user_id: str
    email: str
    created_at: float
    expires_at: float
    client_ip: str = ""
    user_agent: str = ""


TOKEN_FIELDS = tuple(f.name for f in fields(TokenRecord))
"""The stored fields of a token record, in the one order every backend uses."""


class TokenCheck(enum.StrEnum):
    """Why a token was (not) accepted; for audit logs only, never for the caller."""

    OK = "ok"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class TokenOutcome:
    """``record`` is set only when ``check`` is OK; ``user_id`` names the owner of the
    record that was found (for audit logs) even when the token did not match."""

    check: TokenCheck
    record: TokenRecord | None = None
    user_id: str = ""


class ClaimState(enum.StrEnum):
    """What :meth:`Store.claim` found under a name."""

    CLAIMED = "claimed"
    """Nothing: the caller holds the claim now and must settle or release it."""
    PENDING = "pending"
    """Another request holds the claim and has not settled it yet."""
    SETTLED = "settled"
    """A request settled the claim: ``value`` is what it kept."""


_PENDING = "pending:"


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of :meth:`Store.claim`. ``fingerprint`` is the one stored with the
    claim (PENDING, SETTLED), ``value`` the settled value (SETTLED).

    Backends keep a claim as one string (``pending:<fingerprint>``, then
    ``<fingerprint>:<value>``), so that one ``SET NX`` claims it atomically; these helpers
    are that encoding, shared by the built-in backends.
    """

    state: ClaimState
    fingerprint: str = ""
    value: str = ""

    @staticmethod
    def pending(fingerprint: str) -> str:
        if not fingerprint or ":" in fingerprint:
            raise ValueError("a claim fingerprint is a non-empty string without ':'")
        return _PENDING + fingerprint

    @staticmethod
    def settled(fingerprint: str, value: str) -> str:
        if not fingerprint or ":" in fingerprint:
            raise ValueError("a claim fingerprint is a non-empty string without ':'")
        return f"{fingerprint}:{value}"

    @classmethod
    def stored(cls, raw: str | None) -> Claim:
        """The claim a backend found (``None``: nothing, so the caller now holds it)."""
        if raw is None:
            return cls(ClaimState.CLAIMED)
        if raw.startswith(_PENDING):
            return cls(ClaimState.PENDING, raw.removeprefix(_PENDING))
        fingerprint, _, value = raw.partition(":")
        return cls(ClaimState.SETTLED, fingerprint, value)


class Store(Protocol):
    """Atomic operations on codes, tokens, limits and task records.

    A store is an async context manager: it connects on entry and closes on exit. Each
    operation is one round trip on Redis. All times are UNIX seconds; ``now`` comes from
    the caller's clock so tests can drive windows and expiry. Every failure to reach the
    backend raises :class:`~otpd.errors.UnavailableError`, nothing else.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Close the connections (what leaving the ``async with`` block does)."""

    async def ping(self) -> None:
        """Raise :class:`~otpd.errors.UnavailableError` when the store cannot answer."""

    async def issue_otp(
        self, user_id: str, record: OtpRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        """Count ``limits``, then replace the code of ``(user_id, record.purpose)``; all or
        nothing."""

    async def verify_otp(
        self, user_id: str, purpose: str, code_hash: str, now: float
    ) -> VerifyOutcome:
        """Compare in constant time, count a failed attempt, consume on success."""

    async def issue_token(
        self, owner_ref: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        """Count ``limits``, then replace the token of ``(owner_ref, record.purpose)``; all
        or nothing."""

    async def use_token(
        self, owner_ref: str, purpose: str, token_hash: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        """Compare the owner's token in constant time; on a match delete it if ``consume``
        (so at most one caller ever consumes a token)."""

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float
    ) -> LimitExceeded | None:
        """Count one hit on every limit unless one of them is full (then count none)."""

    async def capped_add(
        self, counter: str, amount: float, cap: float, ttl: int
    ) -> tuple[bool, float]:
        """Add ``amount`` to the named counter unless the total would exceed ``cap``.

        Returns whether it was added and the total after the call.
        """

    async def put_task(self, record: TaskRecord, ttl: int) -> None: ...

    async def update_task(self, record: TaskRecord) -> None:
        """Store the mutable fields of ``record`` (status, attempts, provider, error)."""

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def claim(self, scope: str, ref: str, fingerprint: str, ttl: int) -> Claim:
        """Claim ``(scope, ref)`` for ``ttl`` seconds for a request whose payload hashes to
        ``fingerprint``, unless it is claimed or settled already: atomically, so of many
        concurrent callers exactly one gets CLAIMED. Otherwise return what is there."""

    async def settle(self, scope: str, ref: str, fingerprint: str, value: str, ttl: int) -> None:
        """Replace the caller's claim (same ``fingerprint``, still pending) with ``value``,
        kept ``ttl`` seconds; do nothing if the claim is no longer the caller's."""

    async def release(self, scope: str, ref: str, fingerprint: str) -> None:
        """Drop the caller's pending claim so that the next request can claim it; do
        nothing if it is settled or no longer the caller's."""
