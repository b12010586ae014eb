"""In-memory backend for development and embedding: same semantics as Redis, one process.

Every operation runs without awaiting in between, so on one event loop it is atomic.

A limit key holds a :class:`~otpd.store.windows.Window`, the counterpart of the Redis
sorted set: its hits sorted by time, read from a head that moves as hits leave the
window, so a check costs O(log n) in the hits of the window (amortised O(1) to drop the
hits that left) instead of a copy of them. Every key has a deadline in one heap; each
operation frees a few keys whose deadline has passed (and :meth:`MemoryStore.sweep` frees
all of them), so memory comes back once the TTLs run out, without scanning the keys.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
from collections import deque
from collections.abc import Sequence
from heapq import heappop, heappush
from types import TracebackType
from typing import NamedTuple, Self, TypeVar

from otpd.clock import Clock, SystemClock
from otpd.errors import UnavailableError
from otpd.models import TaskRecord, TaskStatus, VerifyReason, VerifyResult
from otpd.store.base import (
    AuditDraft,
    AuditEntry,
    AuditPage,
    Claim,
    ConversionRule,
    Limit,
    LimitExceeded,
    OtpRecord,
    QueuedTask,
    SmsBlock,
    Suppressed,
    Suppression,
    TokenCheck,
    TokenOutcome,
    TokenRecord,
    TotpCheck,
    TotpOutcome,
    TotpRecord,
    VerifyOutcome,
    audit_bounds,
    audit_id,
    parse_audit_id,
    verify_audit_fields,
)
from otpd.store.keys import KeyLayout
from otpd.store.reports import PARKED_MAX, ReportOutcome, TaskReport
from otpd.store.trails import OtpTrail, TrailDelivery
from otpd.store.windows import Window, ms

__all__ = ["MemoryStore"]

T = TypeVar("T")

# Expired keys each operation frees at most: more than any operation creates, so the
# backlog shrinks under traffic while no single call pays for a large one.
_FREE_PER_OP = 32

_OTP_FIELDS = tuple(f.name for f in dataclasses.fields(OtpRecord))

AUDIT_CAP = 10_000
"""The audit records one process keeps, all users together: the oldest go first."""


class _Audited(NamedTuple):
    key: tuple[int, int]  # (ms, seq): the Redis stream entry id
    user_id: str | None
    record: dict[str, str]


class _Code(NamedTuple):
    """An issued code as the Redis hash holds it: the record's fields and the failed
    attempts, in one flat value that is replaced whole when the attempts change."""

    otp_id: str
    code_hash: str
    channel: str
    purpose: str
    created_at: float
    expires_at: float
    max_attempts: int
    client_ip: str
    user_agent: str
    range_hash: str
    tracked: bool
    attempts: int = 0

    @classmethod
    def of(cls, record: OtpRecord) -> _Code:
        return cls(*[getattr(record, name) for name in _OTP_FIELDS])


class _Samples(dict[str, int]):
    """A number range's SMS codes sent (``s:<bucket>``) and verified (``v:<bucket>``), as
    the Redis hash holds them."""


class _Totp(NamedTuple):
    """A TOTP record and, once enabled, the hashes of its recovery codes."""

    record: TotpRecord
    recovery: tuple[str, ...] = ()


class _Link(NamedTuple):
    """A provider message's task (empty until linked) and the reports parked for it."""

    task_id: str
    parked: tuple[tuple[str, str], ...] = ()


class _Trail(NamedTuple):
    trail: OtpTrail
    sealed: str  # the fallback message until it is taken, then ""


_Value = (
    _Code
    | _Trail
    | TokenRecord
    | TaskRecord
    | Window
    | float
    | str
    | _Totp
    | _Link
    | frozenset[str]
    | Suppression
    | SmsBlock
    | _Samples
)


class MemoryStore:
    """The ``memory`` backend: nothing survives the process, nothing is shared."""

    def __init__(self, *, key_prefix: str = "otpd:", clock: Clock | None = None) -> None:
        self._keys = KeyLayout(key_prefix)
        self._clock = clock or SystemClock()
        # key -> value and key -> deadline, as Redis keeps a keyspace and its expiries
        self._data: dict[str, _Value] = {}
        self._expires: dict[str, float] = {}
        # A min-heap of (time, key): when to look at a key next. _queued holds each key's
        # time in it, never after its deadline, so a deadline can move later without a
        # push; an item whose key was deleted or queued again is dropped when it comes up.
        self._deadlines: list[tuple[float, str]] = []
        self._queued: dict[str, float] = {}
        # audit records: one ring, oldest first, and each user's records in the same order
        self._audit: deque[_Audited] = deque()
        self._audit_of: dict[str | None, deque[_Audited]] = {}
        self._audit_last = (0, 0)
        self._closed = False
        # the blocked number ranges and when their blocks end (the Redis sorted set)
        self._sms_blocked: dict[str, float] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for held in (self._data, self._expires, self._queued, self._audit_of):
            held.clear()
        self._sms_blocked.clear()
        self._deadlines.clear()
        self._audit.clear()

    def sweep(self, now: float | None = None) -> int:
        """Free every key whose deadline has passed by ``now`` (the store's clock by
        default) and return how many; operations free a few each, this frees the rest."""
        t = self._clock.time() if now is None else now
        before = len(self._data)
        # one look at every due item: a key queued again is queued after t
        self._expire(t, len(self._deadlines))
        freed = before - len(self._data)
        if freed > len(self._data):
            # a dict keeps its table after deletions; a copy is sized for what is left
            self._data, self._expires = dict(self._data), dict(self._expires)
            self._queued = dict(self._queued)
        return freed

    # ------------------------------------------------------------------ for a fallback

    def forget_otp(self, user_id: str, purpose: str) -> None:
        """Drop the code of ``(user_id, purpose)``: another store issued a newer one."""
        self._forget(self._keys.otp(user_id, purpose))

    def forget_token(self, owner_ref: str, purpose: str) -> None:
        """Drop the token of ``(owner_ref, purpose)``: another store issued a newer one."""
        self._forget(self._keys.token(owner_ref, purpose))

    def holds_task(self, task_id: str) -> bool:
        """Whether this store keeps a live record of ``task_id``."""
        return self._get(self._keys.task(task_id), TaskRecord) is not None

    def forget_task(self, task_id: str) -> None:
        """Drop the record of ``task_id``: another store keeps it from now on."""
        self._forget(self._keys.task(task_id))

    # ------------------------------------------------------------------ plumbing

    def _forget(self, key: str) -> None:
        if key in self._data:
            self._delete(key)

    def _get(self, key: str, kind: type[T], now: float | None = None) -> T | None:
        value = self._data.get(key)
        if value is None:
            return None
        if self._expires[key] <= (self._clock.time() if now is None else now):
            self._delete(key)
            return None
        assert isinstance(value, kind)
        return value

    def _set(self, key: str, value: _Value, expires_at: float) -> None:
        self._data[key] = value
        self._expires[key] = expires_at
        queued = self._queued.get(key)
        if queued is None or expires_at < queued:
            self._queued[key] = expires_at
            heappush(self._deadlines, (expires_at, key))

    def _delete(self, key: str) -> None:
        del self._data[key], self._expires[key], self._queued[key]

    def _expire(self, t: float, budget: int = _FREE_PER_OP) -> None:
        """Look at up to ``budget`` keys due by ``t``: free the expired, requeue the rest."""
        heap = self._deadlines
        while budget > 0 and heap and heap[0][0] <= t:
            budget -= 1
            when, key = heappop(heap)
            expires_at = self._expires.get(key)
            if expires_at is None:
                continue
            if expires_at <= t:
                self._delete(key)
            elif self._queued[key] == when:
                self._queued[key] = expires_at
                heappush(heap, (expires_at, key))

    def _done(self, now: float | None = None) -> None:
        """End of an operation: free a few expired keys. A key goes once both the store's
        clock and the call's time are past its deadline."""
        t = self._clock.time()
        self._expire(t if now is None else min(t, now))

    def _live_window(self, key: str, cutoff: int) -> Window | None:
        """The hits of ``key`` after ``cutoff``; an emptied window is deleted, as Redis
        deletes an empty sorted set."""
        window = self._data.get(key)
        if window is None:
            return None
        assert isinstance(window, Window)
        window.drop_until(cutoff)
        if not window:
            self._delete(key)
            return None
        return window

    def _count(self, limits: Sequence[Limit], now: float, member: str) -> LimitExceeded | None:
        """``check_limits`` then ``record_hits`` of limits.lua: all limits are checked, the
        longest retry wins (the first on a tie), and hits count only if none refuses."""
        now_ms = ms(now)
        keys = [self._keys.limit(lim.bucket, lim.window) for lim in limits]
        worst: Limit | None = None
        worst_retry = -1
        for lim, key in zip(limits, keys, strict=True):
            window_ms = lim.window * 1000
            window = self._live_window(key, now_ms - window_ms)
            count = len(window) if window is not None else 0
            if count < lim.limit or (
                lim.distinct
                and window is not None
                and window.time_of(lim.member or member) is not None
            ):
                continue
            if window is None or lim.limit < 1:
                # limits.lua fails here too: ZRANGE past the last hit has no score
                raise ValueError(f"limit {lim.scope!r} must allow at least one hit")
            # the hit that must leave the window before one more fits
            retry = window.time_at(count - lim.limit) + window_ms - now_ms
            if retry > worst_retry:
                worst, worst_retry = lim, retry
        if worst is not None:
            return LimitExceeded(worst.scope, max(0.0, worst_retry / 1000))
        for lim, key in zip(limits, keys, strict=True):
            found = self._data.get(key)
            hits = Window() if found is None else found
            assert isinstance(hits, Window)
            hits.add(lim.member or member, now_ms)
            # PEXPIRE window: the key outlives its newest hit by one window, so expiry
            # never takes a hit that is still inside it
            self._set(key, hits, (hits.newest() + lim.window * 1000) / 1000)
        return None

    # ------------------------------------------------------------------ store API

    async def ping(self) -> None:
        if self._closed:
            raise UnavailableError("the store is closed")
        self._done()

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
        if enqueue:
            raise ValueError("the memory store keeps no durable queue")
        for index, address_hash in enumerate(unless_suppressed):
            if self._get(self._keys.suppression(address_hash), Suppression, now) is not None:
                self._done(now)
                return Suppressed(index)
        refused = self._count(limits, now, record.otp_id)
        if refused is None:
            key = self._keys.otp(user_id, record.purpose)
            self._set(key, _Code.of(record), record.expires_at)
            if audit is not None:
                await self.append_audit(audit.record, audit.user_id, audit.retention_ms, audit.now)
        self._done(now)
        return refused

    def queues_with_codes(self) -> bool:
        return False

    async def verify_otp(
        self,
        user_id: str,
        purpose: str,
        code_hash: str,
        now: float,
        audit: AuditDraft | None = None,
    ) -> VerifyOutcome:
        key = self._keys.otp(user_id, purpose)
        code = self._get(key, _Code, now)
        if code is None:
            outcome = VerifyOutcome(VerifyResult(False, VerifyReason.NO_ACTIVE_CODE, 0))
        else:
            if code.attempts >= code.max_attempts:
                result = VerifyResult(False, VerifyReason.TOO_MANY_ATTEMPTS, 0)
            elif hmac.compare_digest(code.code_hash, code_hash):
                self._delete(key)
                result = VerifyResult(True)
            else:
                attempts = code.attempts + 1
                self._data[key] = code._replace(attempts=attempts)
                left = code.max_attempts - attempts
                result = VerifyResult(False, VerifyReason.INVALID_CODE, left)
            outcome = VerifyOutcome(
                result, code.otp_id, code.channel, code.range_hash, code.created_at, code.tracked
            )
        if audit is not None:
            record = {**audit.record, **verify_audit_fields(outcome)}
            await self.append_audit(record, audit.user_id, audit.retention_ms, audit.now)
        self._done(now)
        return outcome

    async def issue_token(
        self, owner_ref: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        refused = self._count(limits, now, record.token_id)
        if refused is None:
            key = self._keys.token(owner_ref, record.purpose)
            self._set(key, dataclasses.replace(record), record.expires_at)
        self._done(now)
        return refused

    async def use_token(
        self, owner_ref: str, purpose: str, token_hash: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        key = self._keys.token(owner_ref, purpose)
        outcome = self._check_token(key, purpose, token_hash, now)
        if consume and outcome.check is TokenCheck.OK:
            self._delete(key)
        self._done(now)
        return outcome

    def _check_token(self, key: str, purpose: str, token_hash: str, now: float) -> TokenOutcome:
        rec = self._data.get(key)
        if rec is None:
            return TokenOutcome(TokenCheck.UNKNOWN)
        assert isinstance(rec, TokenRecord)
        # the record's own expires_at, not the key's deadline, mirrors the Redis script
        if now >= rec.expires_at:
            self._delete(key)
            return TokenOutcome(TokenCheck.EXPIRED, user_id=rec.user_id)
        if rec.purpose != purpose or not hmac.compare_digest(rec.token_hash, token_hash):
            return TokenOutcome(TokenCheck.MISMATCH, user_id=rec.user_id)
        return TokenOutcome(TokenCheck.OK, dataclasses.replace(rec), rec.user_id)

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float
    ) -> LimitExceeded | None:
        refused = self._count(limits, now, member)
        self._done(now)
        return refused

    async def capped_add(
        self, counter: str, amount: float, cap: float, ttl: int
    ) -> tuple[bool, float]:
        key = self._keys.counter(counter)
        current = self._get(key, float) or 0.0
        added = current + amount <= cap
        if added:
            current += amount
            self._set(key, current, self._clock.time() + ttl)
        self._done()
        return added, current

    async def put_task(self, record: TaskRecord, ttl: int) -> None:
        key = self._keys.task(record.task_id)
        self._set(key, dataclasses.replace(record), record.created_at + ttl)
        self._done()

    async def update_task(self, record: TaskRecord) -> None:
        key = self._keys.task(record.task_id)
        if key in self._data:
            self._data[key] = dataclasses.replace(record)
        self._done()

    async def get_task(self, task_id: str) -> TaskRecord | None:
        rec = self._get(self._keys.task(task_id), TaskRecord)
        self._done()
        return None if rec is None else dataclasses.replace(rec)

    # ------------------------------------------------------------------ suppressions

    async def suppress(self, address_hash: str, record: Suppression, ttl: int) -> None:
        expires_at = self._clock.time() + ttl if ttl > 0 else math.inf
        self._set(self._keys.suppression(address_hash), record, expires_at)
        self._done()

    async def unsuppress(self, address_hash: str) -> bool:
        key = self._keys.suppression(address_hash)
        found = self._get(key, Suppression) is not None
        if found:
            self._delete(key)
        self._done()
        return found

    async def suppressions(self, address_hashes: Sequence[str]) -> list[Suppression | None]:
        found = [self._get(self._keys.suppression(h), Suppression) for h in address_hashes]
        self._done()
        return found

    # ------------------------------------------------------------------ SMS conversion

    async def sms_sent(
        self, range_hash: str, sealed_prefix: str, rule: ConversionRule, now: float
    ) -> SmsBlock | None:
        block_key = self._keys.sms_block(range_hash)
        block = self._get(block_key, SmsBlock, now)
        if block is not None and block.expires_at > now:
            self._done(now)
            return block
        self._forget(block_key)
        self._sms_blocked.pop(range_hash, None)
        key = self._keys.sms_samples(range_hash)
        samples = self._get(key, _Samples, now) or _Samples()
        current = math.floor(now / rule.bucket)
        oldest = current - math.ceil(rule.window / rule.bucket) + 1
        sent = verified = 0
        for field, n in list(samples.items()):
            kind, _, at = field.partition(":")
            if int(at) < oldest:
                del samples[field]
            elif kind == "s":
                sent += n
            else:
                verified += n
        low = verified < rule.min_conversion * sent
        if rule.min_samples > 0 and sent >= rule.min_samples and low:
            self._forget(key)
            block = SmsBlock(
                range_hash,
                sealed_prefix,
                "low_conversion",
                now,
                now + rule.block_seconds,
                sent,
                verified,
            )
            self._set(block_key, block, block.expires_at)
            self._sms_blocked[range_hash] = block.expires_at
            self._done(now)
            return dataclasses.replace(block, fresh=True)
        field = f"s:{current}"
        samples[field] = samples.get(field, 0) + 1
        self._set(key, samples, now + rule.window + rule.bucket)
        self._done(now)
        return None

    def _credit(self, range_hash: str, field: str, delta: int, now: float) -> None:
        samples = self._get(self._keys.sms_samples(range_hash), _Samples, now)
        if samples is not None:
            n = samples.get(field, 0) + delta
            if n > 0:
                samples[field] = n
            else:
                samples.pop(field, None)
        self._done(now)

    async def sms_unsent(self, range_hash: str, rule: ConversionRule, now: float) -> None:
        self._credit(range_hash, f"s:{math.floor(now / rule.bucket)}", -1, now)

    async def sms_verified(
        self, range_hash: str, issued_at: float, rule: ConversionRule, now: float
    ) -> None:
        at = math.floor(issued_at / rule.bucket)
        if at > math.floor(now / rule.bucket) - math.ceil(rule.window / rule.bucket):
            self._credit(range_hash, f"v:{at}", 1, now)

    async def sms_blocks(self, now: float) -> list[SmsBlock]:
        found: list[SmsBlock] = []
        for range_hash, expires_at in sorted(self._sms_blocked.items(), key=lambda i: i[1]):
            block = self._get(self._keys.sms_block(range_hash), SmsBlock, now)
            if block is None or expires_at <= now:
                del self._sms_blocked[range_hash]
            else:
                found.append(block)
        self._done(now)
        return found

    async def sms_unblock(self, range_hash: str, now: float) -> bool:
        key = self._keys.sms_block(range_hash)
        block = self._get(key, SmsBlock, now)
        self._forget(key)
        self._forget(self._keys.sms_samples(range_hash))
        self._sms_blocked.pop(range_hash, None)
        self._done(now)
        return block is not None and block.expires_at > now

    # ------------------------------------------------------------------ claims

    async def claim(self, scope: str, ref: str, fingerprint: str, ttl: int) -> Claim:
        key = self._keys.remembered(scope, ref)
        existing = self._get(key, str)
        if existing is None:
            self._set(key, Claim.pending(fingerprint), self._clock.time() + ttl)
        self._done()
        return Claim.stored(existing)

    async def settle(self, scope: str, ref: str, fingerprint: str, value: str, ttl: int) -> None:
        key = self._keys.remembered(scope, ref)
        if self._get(key, str) == Claim.pending(fingerprint):
            self._set(key, Claim.settled(fingerprint, value), self._clock.time() + ttl)
        self._done()

    async def release(self, scope: str, ref: str, fingerprint: str) -> None:
        key = self._keys.remembered(scope, ref)
        if self._get(key, str) == Claim.pending(fingerprint):
            self._delete(key)
        self._done()

    # ------------------------------------------------------------------ provider reports

    async def link_message(self, ref: str, task_id: str, ttl: int) -> list[str]:
        key = self._keys.message(ref)
        link = self._get(key, _Link)
        self._set(key, _Link(task_id), self._clock.time() + ttl)
        self._done()
        return [] if link is None else [parked for _, parked in link.parked]

    async def message_task(self, ref: str, event_ref: str, parked: str, ttl: int) -> str | None:
        key = self._keys.message(ref)
        link = self._get(key, _Link) or _Link("")
        if link.task_id:
            self._done()
            return link.task_id
        if all(seen != event_ref for seen, _ in link.parked):
            kept = (*link.parked, (event_ref, parked))[-PARKED_MAX:]
            self._set(key, link._replace(parked=kept), self._clock.time() + ttl)
        self._done()
        return None

    async def report_task(self, task_id: str, report: TaskReport) -> ReportOutcome:
        key = self._keys.task(task_id)
        record = self._get(key, TaskRecord)
        if record is None:
            self._done()
            return ReportOutcome.GONE
        seen_key = key + ":reports"
        seen = self._get(seen_key, frozenset) or frozenset()
        outcome = ReportOutcome.APPLIED
        if report.event_ref in seen:
            outcome = ReportOutcome.DUPLICATE
        elif record.provider_message_id != report.message_id:
            outcome = ReportOutcome.OTHER_MESSAGE
        elif record.status not in report.status.replaced_by():
            outcome = ReportOutcome.STALE
        else:
            self._data[key] = _reported(record, report)
        if outcome is not ReportOutcome.DUPLICATE:
            self._set(seen_key, seen | {report.event_ref}, self._expires[key])
        self._done()
        return outcome

    # ------------------------------------------------------------------ OTP trails

    async def put_trail(self, trail: OtpTrail, sealed_fallback: str, ttl: int) -> None:
        self._set(
            self._keys.trail(trail.otp_id), _Trail(trail, sealed_fallback), self._clock.time() + ttl
        )
        self._done()

    async def get_trail(self, otp_id: str) -> OtpTrail | None:
        found = self._get(self._keys.trail(otp_id), _Trail)
        self._done()
        return None if found is None else found.trail

    async def take_fallback(
        self, otp_id: str, failed_task_id: str, delivery: TrailDelivery, now: float
    ) -> str | None:
        key = self._keys.trail(otp_id)
        found = self._get(key, _Trail)
        self._done()
        if found is None or not found.sealed:
            return None
        trail = found.trail
        first = trail.deliveries[0].task_id if trail.deliveries else ""
        if (
            first != failed_task_id
            or trail.verified_at
            or now >= trail.fallback_until
            or now >= trail.expires_at
        ):
            return None
        taken = dataclasses.replace(
            trail, deliveries=(*trail.deliveries, delivery), fell_back_at=now
        )
        self._data[key] = _Trail(taken, "")
        return found.sealed

    async def trail_verified(self, otp_id: str, now: float) -> None:
        key = self._keys.trail(otp_id)
        found = self._get(key, _Trail)
        if found is not None and not found.trail.verified_at:
            self._data[key] = _Trail(dataclasses.replace(found.trail, verified_at=now), "")
        self._done()

    # ------------------------------------------------------------------ audit

    async def append_audit(
        self, record: dict[str, str], user_id: str | None, retention_ms: int, now: float
    ) -> str:
        now_ms = ms(now)
        last_ms, last_seq = self._audit_last
        # ids never go back, as XADD refuses an id below the stream's top
        key = (now_ms, 0) if now_ms > last_ms else (last_ms, last_seq + 1)
        self._audit_last = key
        entry = _Audited(key, user_id, dict(record))
        self._audit.append(entry)
        self._audit_of.setdefault(user_id, deque()).append(entry)
        cutoff = now_ms - retention_ms
        ring = self._audit
        while ring and (len(ring) > AUDIT_CAP or ring[0].key[0] < cutoff):
            self._drop_oldest_audit()
        self._done(now)
        return audit_id(*key)

    async def append_audits(self, entries: Sequence[AuditEntry], retention_ms: int) -> list[str]:
        return [
            await self.append_audit(record, user_id, retention_ms, now)
            for record, user_id, now in entries
        ]

    def _drop_oldest_audit(self) -> None:
        oldest = self._audit.popleft()
        # the oldest record of all is the oldest of its user too
        mine = self._audit_of[oldest.user_id]
        mine.popleft()
        if not mine:
            del self._audit_of[oldest.user_id]

    async def audit_events(
        self,
        user_id: str | None,
        event: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        cursor: str | None,
    ) -> AuditPage:
        lo, hi = audit_bounds(since, until)
        below = parse_audit_id(cursor) if cursor is not None else None
        if cursor is not None and below is None:
            raise ValueError("not an audit cursor")
        found: list[_Audited] = []
        for entry in reversed(self._audit_of.get(user_id, ())):
            if entry.key[0] > hi or (below is not None and entry.key >= below):
                continue
            if entry.key[0] < lo or len(found) > limit:
                break
            if event is None or entry.record.get("event") == event:
                found.append(entry)
        self._done()
        more = len(found) > limit
        events = [{"id": audit_id(*e.key), **e.record} for e in found[:limit]]
        return events, events[-1]["id"] if more else None

    # ------------------------------------------------------------------ TOTP

    def _lockout(self, lockout: Limit, now: float) -> float | None:
        """Seconds until ``lockout`` takes one more failure; None when it takes one now
        (``check_limits`` of limits.lua for one limit, without counting)."""
        now_ms = ms(now)
        window_ms = lockout.window * 1000
        key = self._keys.limit(lockout.bucket, lockout.window)
        window = self._live_window(key, now_ms - window_ms)
        count = len(window) if window is not None else 0
        if window is None or count < lockout.limit:
            return None
        return max(0.0, (window.time_at(count - lockout.limit) + window_ms - now_ms) / 1000)

    async def totp_begin(
        self, user_id: str, record: TotpRecord, expires_at: float, now: float
    ) -> bool:
        enabled = self._get(self._keys.totp(user_id), _Totp, now) is not None
        if not enabled:
            self._set(self._keys.totp_pending(user_id), _Totp(record), expires_at)
        self._done(now)
        return not enabled

    async def totp_get(self, user_id: str, *, pending: bool, now: float) -> TotpRecord | None:
        key = self._keys.totp_pending(user_id) if pending else self._keys.totp(user_id)
        found = self._get(key, _Totp, now)
        self._done(now)
        return None if found is None else found.record

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
        outcome = self._totp_check(user_id, sealed_secret, steps, lockout, member, now, confirm)
        self._done(now)
        return outcome

    def _totp_check(
        self,
        user_id: str,
        sealed_secret: str,
        steps: Sequence[int],
        lockout: Limit,
        member: str,
        now: float,
        confirm: Sequence[str] | None,
    ) -> TotpOutcome:
        key = self._keys.totp(user_id) if confirm is None else self._keys.totp_pending(user_id)
        found = self._get(key, _Totp, now)
        if found is None:
            return TotpOutcome(TotpCheck.MISSING)
        if found.record.sealed_secret != sealed_secret:
            return TotpOutcome(TotpCheck.CHANGED)
        locked = self._lockout(lockout, now)
        if locked is not None:
            return TotpOutcome(TotpCheck.LOCKED, locked)
        if not steps:
            self._count([lockout], now, member)
            return TotpOutcome(TotpCheck.INVALID)
        fresh = [step for step in steps if step > found.record.last_step]
        if not fresh:
            return TotpOutcome(TotpCheck.REPLAYED)
        record = dataclasses.replace(found.record, last_step=fresh[0])
        if confirm is None:
            self._data[key] = found._replace(record=record)
        else:
            self._delete(key)
            self._set(self._keys.totp(user_id), _Totp(record, tuple(confirm)), math.inf)
        return TotpOutcome(TotpCheck.OK)

    async def totp_use_recovery(
        self, user_id: str, code_hash: str, lockout: Limit, member: str, now: float
    ) -> TotpOutcome:
        key = self._keys.totp(user_id)
        found = self._get(key, _Totp, now)
        locked = None if found is None else self._lockout(lockout, now)
        if found is None:
            outcome = TotpOutcome(TotpCheck.MISSING)
        elif locked is not None:
            outcome = TotpOutcome(TotpCheck.LOCKED, locked)
        else:
            matched = -1
            for i, stored in enumerate(found.recovery):
                # every code compared, in constant time
                if hmac.compare_digest(stored, code_hash) and matched < 0:
                    matched = i
            if matched < 0:
                self._count([lockout], now, member)
                outcome = TotpOutcome(TotpCheck.INVALID)
            else:
                left = found.recovery[:matched] + found.recovery[matched + 1 :]
                self._data[key] = found._replace(recovery=left)
                outcome = TotpOutcome(TotpCheck.OK, remaining=len(left))
        self._done(now)
        return outcome

    async def totp_set_recovery(self, user_id: str, code_hashes: Sequence[str]) -> bool:
        key = self._keys.totp(user_id)
        found = self._get(key, _Totp)
        if found is not None:
            self._data[key] = found._replace(recovery=tuple(code_hashes))
        self._done()
        return found is not None

    async def totp_delete(self, user_id: str) -> bool:
        key = self._keys.totp(user_id)
        found = self._get(key, _Totp) is not None
        self._forget(key)
        self._forget(self._keys.totp_pending(user_id))
        self._done()
        return found


def _reported(record: TaskRecord, report: TaskReport) -> TaskRecord:
    """``record`` with ``report`` applied (the caller checked that it applies)."""
    delivered = report.status is TaskStatus.DELIVERED
    return dataclasses.replace(
        record,
        status=report.status,
        updated_at=max(record.updated_at, report.at),
        delivered_at=report.at if delivered else record.delivered_at,
        reason="" if delivered else report.reason,
    )
