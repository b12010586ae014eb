"""The store interface every backend implements, and the values it speaks in."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from otpd.models import TaskRecord, VerifyResult
from otpd.store.keys import Keys

__all__ = [
    "Limit",
    "LimitExceeded",
    "OtpRecord",
    "Store",
    "TokenCheck",
    "TokenOutcome",
    "TokenRecord",
    "VerifyOutcome",
]


@dataclass(frozen=True, slots=True)
class Limit:
    """A sliding-window limit: at most ``limit`` hits on ``key`` within ``window`` seconds.

    ``scope`` names the limit in errors and metrics (``user_hour``, ``ip_hour``). A
    ``distinct`` limit counts different members instead of hits: a member already seen in
    the window always passes (``at most 10 different numbers per range``). ``member``
    overrides the member of the call for this limit (a distinct limit names what it
    counts: the hashed number), so limits of different kinds can go in one atomic call.
    """

    scope: str
    key: str
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


class Store(Protocol):
    """Atomic operations on codes, limits and task records.

    Each method is one round trip on Redis. All times are UNIX seconds; ``now`` comes from
    the caller's clock so tests can drive windows and expiry.
    """

    keys: Keys

    async def ping(self) -> None:
        """Raise :class:`~otpd.errors.UnavailableError` when the store cannot answer."""

    async def issue_otp(
        self, key: str, record: OtpRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        """Check and count ``limits``, then replace the code at ``key``; all or nothing."""

    async def verify_otp(self, key: str, code_hash: str, now: float) -> VerifyOutcome:
        """Compare in constant time, count a failed attempt, consume on success."""

    async def issue_token(
        self, key: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        """Check and count ``limits``, then replace the token at ``key``; all or nothing."""

    async def use_token(
        self, key: str, token_hash: str, purpose: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        """Compare the token at ``key`` in constant time; on a match delete it if
        ``consume`` (so at most one caller ever consumes a token)."""

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float, *, consume: bool = True
    ) -> LimitExceeded | None:
        """Count one hit on every limit unless one of them is full (then count none)."""

    async def capped_add(self, key: str, amount: float, cap: float, ttl: int) -> tuple[bool, float]:
        """Add ``amount`` to the counter at ``key`` unless the total would exceed ``cap``.

        Returns whether it was added and the total after the call.
        """

    async def put_task(self, record: TaskRecord, ttl: int) -> None: ...

    async def update_task(self, record: TaskRecord) -> None:
        """Store the mutable fields of ``record`` (status, attempts, provider, error)."""

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def remember(self, key: str, value: str, ttl: int) -> str | None:
        """Set ``key`` to ``value`` unless it exists; return the existing value if it does."""

    async def aclose(self) -> None: ...
