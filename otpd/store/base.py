"""The store interface every backend implements, and the values it speaks in.

Callers name what they count or keep (a user, a purpose, a bucket); how that becomes
keys is each backend's own business (:mod:`otpd.store.keys` for the built-in ones).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Protocol, Self

from otpd.models import TaskRecord, VerifyResult
from otpd.store.reports import ReportOutcome, TaskReport
from otpd.store.trails import OtpTrail, TrailDelivery

__all__ = [
    "AUDIT_GLOBAL_CAP",
    "AUDIT_MAX_LIMIT",
    "TOKEN_FIELDS",
    "TOTP_FIELDS",
    "AuditDraft",
    "AuditEntry",
    "AuditPage",
    "Bucket",
    "BucketKind",
    "Claim",
    "ClaimState",
    "ConversionRule",
    "Limit",
    "LimitExceeded",
    "OtpRecord",
    "QueuedTask",
    "SmsBlock",
    "Store",
    "Suppressed",
    "Suppression",
    "TokenCheck",
    "TokenOutcome",
    "TokenRecord",
    "TotpCheck",
    "TotpOutcome",
    "TotpRecord",
    "VerifyOutcome",
    "audit_bounds",
    "audit_id",
    "parse_audit_id",
    "verify_audit_fields",
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
class QueuedTask:
    """A task of the durable queue to record with the code that it carries, in the same
    step (:meth:`Store.issue_otp`): its record with ``extra`` fields (the sealed message),
    the record's TTL and its partition's most ready entries."""

    record: TaskRecord
    extra: Mapping[str, str]
    ttl: int
    max_backlog: int


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A request refused because a recipient is suppressed: ``index`` into the
    suppression hashes the request named."""

    index: int


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
    range_hash: str = ""
    """SMS codes: the keyed hash of the number range, to credit a verification to it."""
    tracked: bool = False


@dataclass(frozen=True, slots=True)
class Suppression:
    """A suppressed recipient, stored under a keyed hash of its normalised address: its
    masked display form, why and by whom (``api``, ``webhook``) it was suppressed, since
    when (UNIX seconds). Never the address itself."""

    display: str
    reason: str
    source: str
    since: float


@dataclass(frozen=True, slots=True)
class VerifyOutcome:
    """What a verification found; the record's fields are set whenever a record was found."""

    result: VerifyResult
    otp_id: str = ""
    channel: str = ""
    range_hash: str = ""
    created_at: float = 0.0
    tracked: bool = False


@dataclass(frozen=True, slots=True)
class ConversionRule:
    """When a number range is blocked for low conversion: at least ``min_samples`` SMS
    codes sent in ``window`` seconds, fewer than ``min_conversion`` of them verified; the
    block lasts ``block_seconds``."""

    window: int
    min_samples: int
    min_conversion: float
    block_seconds: int

    @property
    def bucket(self) -> int:
        """Samples are counted per bucket of this many seconds (a window holds ~60)."""
        return max(1, self.window // 60)


@dataclass(frozen=True, slots=True)
class SmsBlock:
    """A number range refused SMS until ``expires_at``: its prefix sealed with the keyring
    (never in clear), why, since when, and the samples that decided it. ``fresh``: the
    call that returned it set it."""

    range_hash: str
    sealed_prefix: str
    reason: str
    blocked_at: float
    expires_at: float
    sent: int
    verified: int
    fresh: bool = False


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


AUDIT_MAX_LIMIT = 1000
"""The most audit events one query returns."""
AUDIT_GLOBAL_CAP = 100_000
"""About how many events without a user the built-in backends keep (newest first)."""

AuditPage = tuple[list[dict[str, str]], str | None]
"""Audit events newest first (each with its ``id``), and the cursor of the next page
(``None``: there is none)."""

AuditEntry = tuple[dict[str, str], str | None, float]
"""One record to keep: the record, its user (``None``: no user), and when it happened."""


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """The audit record of an operation whose outcome the store decides (a verify): what
    is known before it (who, from where, when) in ``record``, kept for ``retention_ms``
    under ``user_id``. The store adds the outcome's fields and keeps the record in the
    same step as the operation: one round trip, and never an outcome without its record."""

    record: dict[str, str]
    user_id: str | None  # None: the stream of events that name no user
    now: float
    retention_ms: int


def verify_audit_fields(outcome: VerifyOutcome) -> dict[str, str]:
    """What the outcome of a verify adds to its audit record (verify_otp.lua adds the
    same, and the store contract tests hold every backend to it)."""
    result = outcome.result
    fields = {"event": "otp_verified" if result.verified else "otp_failed"}
    if outcome.otp_id:
        fields["otp_id"] = outcome.otp_id
    if outcome.channel:
        fields["channel"] = outcome.channel
    label = "verified" if result.verified else str(result.reason)
    fields["result"] = label
    if not result.verified:
        fields["reason"] = label
    fields["attempts_left"] = str(result.attempts_left)
    return fields


_AUDIT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = (1 << 64) - 1


def parse_audit_id(value: str) -> tuple[int, int] | None:
    """``"1800000000000-3"`` as ``(ms, seq)``; None unless it is exactly such an id (a
    Redis stream entry id, what audit cursors are)."""
    match = _AUDIT_ID.fullmatch(value)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms <= _U64 and seq <= _U64 else None


def audit_id(ms: int, seq: int) -> str:
    return f"{ms}-{seq}"


def audit_bounds(since: float | None, until: float | None) -> tuple[int, int]:
    """The first and last millisecond (inclusive) of an audit query's time range."""
    lo = 0 if since is None else max(0, math.ceil(since * 1000))
    hi = _U64 if until is None else max(0, math.floor(until * 1000))
    return lo, hi


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
        self,
        user_id: str,
        record: OtpRecord,
        limits: Sequence[Limit],
        now: float,
        *,
        unless_suppressed: Sequence[str] = (),
        enqueue: Sequence[QueuedTask] = (),
        audit: AuditDraft | None = None,
    ) -> LimitExceeded | Suppressed | None:
        """Count ``limits``, then replace the code of ``(user_id, record.purpose)``; all or
        nothing. Nothing either when one of ``unless_suppressed`` (keyed hashes of the
        recipients, as :meth:`suppress` keeps them) is suppressed: then :class:`Suppressed`
        names the first one. ``enqueue``: the durable queue's tasks for the code, recorded
        and queued in the same step (only a store that :meth:`queues_with_codes` takes
        them); UnavailableError, and nothing written, when a partition is full. ``audit``:
        the whole record of the issue, kept in the same step when the code is stored (and
        only then)."""

    def queues_with_codes(self) -> bool:
        """Whether :meth:`issue_otp` takes ``enqueue`` (one Redis, not a cluster)."""

    async def verify_otp(
        self,
        user_id: str,
        purpose: str,
        code_hash: str,
        now: float,
        audit: AuditDraft | None = None,
    ) -> VerifyOutcome:
        """Compare in constant time, count a failed attempt, consume on success; keep
        ``audit`` with :func:`verify_audit_fields` of the outcome in the same step."""

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

    async def suppress(self, address_hash: str, record: Suppression, ttl: int) -> None:
        """Keep ``record`` for the recipient ``address_hash`` (replacing what was there) for
        ``ttl`` seconds, or for good when ``ttl`` is 0."""

    async def unsuppress(self, address_hash: str) -> bool:
        """Drop the suppression of ``address_hash``; whether there was one."""

    async def suppressions(self, address_hashes: Sequence[str]) -> list[Suppression | None]:
        """The suppression of each of ``address_hashes`` (None where there is none), in
        order, in one round trip."""

    async def sms_sent(
        self, range_hash: str, sealed_prefix: str, rule: ConversionRule, now: float
    ) -> SmsBlock | None:
        """Count one SMS code sent to the range ``range_hash``, unless it is blocked: then
        return the block and count nothing. A range whose window already holds
        ``rule.min_samples`` codes, fewer than ``rule.min_conversion`` of them verified,
        is blocked by this call (``fresh``), with ``sealed_prefix`` to list it by."""

    async def sms_unsent(self, range_hash: str, rule: ConversionRule, now: float) -> None:
        """Take back a code :meth:`sms_sent` counted at ``now`` that was not sent after all."""

    async def sms_verified(
        self, range_hash: str, issued_at: float, rule: ConversionRule, now: float
    ) -> None:
        """Credit the range with a verified code issued at ``issued_at`` (ignored once that
        has left the window)."""

    async def sms_blocks(self, now: float) -> list[SmsBlock]:
        """Every live block, the soonest to expire first."""

    async def sms_unblock(self, range_hash: str, now: float) -> bool:
        """Lift the block of ``range_hash`` and forget its samples; whether one was live."""

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

    async def link_message(self, ref: str, task_id: str, ttl: int) -> list[str]:
        """Remember for ``ttl`` seconds that provider message ``ref`` (a keyed hash of the
        provider and its message id) is task ``task_id``; return, and forget, the reports
        that were parked for it because they arrived first."""

    async def message_task(self, ref: str, event_ref: str, parked: str, ttl: int) -> str | None:
        """The task linked to provider message ``ref``; when none is linked (yet), keep
        ``parked`` under ``event_ref`` for ``ttl`` seconds, for :meth:`link_message` to
        hand over, and return None. Atomic with :meth:`link_message`: no report is lost
        between the two."""

    async def report_task(self, task_id: str, report: TaskReport) -> ReportOutcome:
        """Apply a provider's report to a task record; see :class:`TaskReport`."""

    async def put_trail(self, trail: OtpTrail, sealed_fallback: str, ttl: int) -> None:
        """Keep the trail of a code issued with a fallback, and its fallback message
        (``sealed_fallback``), for ``ttl`` seconds; see :mod:`otpd.store.trails`."""

    async def get_trail(self, otp_id: str) -> OtpTrail | None: ...

    async def take_fallback(
        self, otp_id: str, failed_task_id: str, delivery: TrailDelivery, now: float
    ) -> str | None:
        """Hand out the sealed fallback message, once: when ``failed_task_id`` is the
        trail's first delivery, the fallback was not taken, the code was not verified and
        ``now`` is before both ``fallback_until`` and ``expires_at``. Records ``delivery``
        (the fallback's task) on the trail in the same step; None otherwise."""

    async def trail_verified(self, otp_id: str, now: float) -> None:
        """Record that the code was verified (no fallback is sent after that)."""

    async def append_audit(
        self, record: dict[str, str], user_id: str | None, retention_ms: int, now: float
    ) -> str:
        """Keep one audit record (under ``user_id``, or with the events of no user) for
        ``retention_ms``; return its id (``<ms>-<seq>``, later records sort higher)."""

    async def append_audits(self, entries: Sequence[AuditEntry], retention_ms: int) -> list[str]:
        """:meth:`append_audit` for each ``(record, user_id, now)``, in order, in one round
        trip; their ids."""

    async def audit_events(
        self,
        user_id: str | None,
        event: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        cursor: str | None,
    ) -> AuditPage:
        """The records of ``user_id`` (``None``: of no user) newest first, of ``event``
        only when given, recorded from ``since`` to ``until`` (inclusive), at most
        ``limit``, older than the record ``cursor`` names (a page's next cursor)."""

    async def totp_begin(
        self, user_id: str, record: TotpRecord, expires_at: float, now: float
    ) -> bool:
        """Start or restart the pending TOTP enrolment of ``user_id`` until ``expires_at``;
        False (and nothing changed) when TOTP is enabled for the user already."""

    async def totp_get(self, user_id: str, *, pending: bool, now: float) -> TotpRecord | None:
        """The user's enabled TOTP record (``pending``: the pending enrolment), or None."""

    async def totp_check(
        self,
        user_id: str,
        sealed_secret: str,
        steps: Sequence[int],
        lockout: Limit,
        member: str,
        now: float,
        *,
        confirm: Sequence[str] | None = None,
    ) -> TotpOutcome:
        """Atomically accept the first of ``steps`` (the steps whose code matched, oldest
        first) above the stored last step, and store it as the last step: of concurrent
        calls with one code exactly one gets OK, the others REPLAYED. No step at all is a
        failure, counted on ``lockout`` as ``member``; a full ``lockout`` is LOCKED before
        anything else. CHANGED: the record no longer holds ``sealed_secret`` (read it
        again). With ``confirm`` (the recovery code hashes), the pending enrolment is
        checked instead and, on OK, enabled with them."""

    async def totp_use_recovery(
        self, user_id: str, code_hash: str, lockout: Limit, member: str, now: float
    ) -> TotpOutcome:
        """Consume the recovery code hashing to ``code_hash`` (compared in constant time):
        OK with how many are left, else INVALID (a failure on ``lockout``), LOCKED or
        MISSING (TOTP is not enabled)."""

    async def totp_set_recovery(self, user_id: str, code_hashes: Sequence[str]) -> bool:
        """Replace the recovery codes of an enabled user; False when TOTP is not enabled."""

    async def totp_delete(self, user_id: str) -> bool:
        """Remove the user's TOTP secret, recovery codes and pending enrolment; whether TOTP
        was enabled."""


@dataclass(frozen=True, slots=True)
class TotpRecord:
    """A user's TOTP secret, sealed with the keyring (never in clear), its parameters and
    the step of the last code accepted (-1: none yet)."""

    sealed_secret: str
    algorithm: str
    digits: int
    period: int
    last_step: int = -1


TOTP_FIELDS = tuple(f.name for f in fields(TotpRecord))
"""The stored fields of a TOTP record, in the one order every backend uses."""


class TotpCheck(enum.StrEnum):
    """What a TOTP or recovery code check found."""

    OK = "ok"
    INVALID = "invalid_code"
    REPLAYED = "replayed"
    MISSING = "missing"
    """No enabled TOTP (no pending enrolment, for a confirmation)."""
    CHANGED = "changed"
    """The secret was replaced since the caller read it."""
    LOCKED = "locked"
    """Too many failures: ``retry_after`` seconds until one more is allowed."""


@dataclass(frozen=True, slots=True)
class TotpOutcome:
    check: TotpCheck
    retry_after: float = 0.0
    remaining: int = 0
