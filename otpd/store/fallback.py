"""``store.fallback = "memory"``: keep serving from a process-local store while the primary
(Redis) cannot be reached.

:class:`FallbackStore` runs each operation on the primary unless it is degraded. The first
:class:`~otpd.errors.UnavailableError` makes it degraded (``otpd_store_degraded`` 1, one
``store.degraded`` warning) and the operation runs on the local :class:`MemoryStore`
instead; one background probe writes to the primary every ``probe_seconds`` (opening it first
when it never opened) and ends the degraded mode when that works (one ``store.restored``
line).

What the local store took stays there until it expires: a code, token or idempotency
claim issued locally keeps answering from it (so a code issued during an outage verifies
on this instance, and a code it superseded in the primary never comes back), until the
primary issues a newer one for the same key. Task records the local store holds are read
and written there. The SMS budget (:meth:`capped_add`) never falls back: it raises
:class:`~otpd.errors.StoreDegradedError` instead, so money is never spent blind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import structlog

from otpd.clock import Clock
from otpd.errors import StoreDegradedError, UnavailableError
from otpd.metrics import Metrics
from otpd.models import TaskRecord
from otpd.store.base import (
    AuditDraft,
    AuditEntry,
    AuditPage,
    Claim,
    ClaimState,
    ConversionRule,
    Limit,
    LimitExceeded,
    OtpRecord,
    QueuedTask,
    SmsBlock,
    Store,
    Suppressed,
    Suppression,
    TokenOutcome,
    TokenRecord,
    TotpOutcome,
    TotpRecord,
    VerifyOutcome,
    parse_audit_id,
)
from otpd.store.memory import MemoryStore
from otpd.store.reports import ReportOutcome, TaskReport
from otpd.store.trails import OtpTrail, TrailDelivery

__all__ = ["FallbackStore"]

T = TypeVar("T")

log = structlog.get_logger("otpd.store")

_PROBE_COUNTER = "store_probe"  # the probe writes 0 to this counter: a write, one script


def _describe(exc: BaseException) -> str:
    """Why the primary failed, in a few words, for ``/readyz`` and the log: the error's
    message and what failed underneath (``Connection refused``)."""
    text = str(exc) or type(exc).__name__
    detail = ""
    seen = exc.__cause__ or exc.__context__
    for _ in range(10):  # a chain may loop back on itself
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            detail = seen.strerror
            break
        detail = detail or str(seen).rstrip(".")
        seen = seen.__cause__ or seen.__context__
    return f"{text}: {detail}" if detail and detail not in text else text


class FallbackStore:
    """A :class:`~otpd.store.base.Store` that serves from ``local`` while ``primary`` is
    unreachable; see the module."""

    def __init__(
        self,
        primary: Store,
        local: MemoryStore,
        *,
        clock: Clock,
        metrics: Metrics,
        probe_seconds: float = 1.0,
    ) -> None:
        self.primary = primary
        self.local = local
        self._clock = clock
        self._metrics = metrics
        self._probe_seconds = probe_seconds
        self._degraded = False
        self._reason = ""
        self._since = 0.0
        self._primary_open = False
        self._entered = False
        self._probe: asyncio.Task[None] | None = None
        # What the local store answers for, and until when: ("otp", user, purpose),
        # ("token", owner, purpose), ("claim", scope, ref). A consumed local code keeps
        # its entry, so the older code of the primary stays superseded until then.
        self._here: dict[tuple[str, str, str], float] = {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("the store is already open")
        self._entered = True
        await self.local.__aenter__()
        try:
            await self.primary.__aenter__()
        except UnavailableError as exc:
            self.note_unavailable("open", exc)
        except BaseException:
            await self.local.aclose()
            raise
        else:
            self._primary_open = True
        self._probe = asyncio.create_task(self._probe_loop(), name="otpd-store-probe")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        if self._primary_open:
            self._primary_open = False
            await self.primary.aclose()
        await self.local.aclose()

    # ------------------------------------------------------------------ state

    @property
    def degraded(self) -> bool:
        """True while operations run on the local store."""
        return self._degraded

    @property
    def reason(self) -> str:
        """Why the store is degraded ("" when it is not)."""
        return self._reason if self._degraded else ""

    def note_unavailable(self, op: str, exc: BaseException) -> None:
        """The primary failed ``op``: serve from the local store until the probe succeeds.
        Callers beside this store (the durable queue) report their failures here too."""
        if self._degraded:
            return
        self._degraded = True
        self._reason = _describe(exc)
        self._since = time.monotonic()
        self._metrics.store_degraded.set(1)
        log.warning("store.degraded", operation=op, reason=self._reason, fallback="memory")

    def _restored(self) -> None:
        self._degraded = False
        self._metrics.store_degraded.set(0)
        log.warning(
            "store.restored",
            after_seconds=round(time.monotonic() - self._since, 1),
            kept_locally=len(self._here),
        )

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._probe_seconds)
            self._sweep()
            if self._degraded and await self._probe_once():
                self._restored()

    async def _probe_once(self) -> bool:
        try:
            if not self._primary_open:
                await self.primary.__aenter__()
                self._primary_open = True
            # a write: a replica or a full Redis answers a ping but refuses this
            await self.primary.capped_add(_PROBE_COUNTER, 0, 1, 60)
        except UnavailableError:
            return False
        except Exception:
            # the probe must outlive anything; the next round tries again
            log.exception("store.probe_failed")
            return False
        return True

    def _sweep(self) -> None:
        now = self._clock.time()
        for key in [k for k, until in self._here.items() if until <= now]:
            del self._here[key]
        self.local.sweep()

    def _held(self, key: tuple[str, str, str], now: float) -> bool:
        until = self._here.get(key)
        if until is None:
            return False
        if until <= now:
            del self._here[key]
            return False
        return True

    async def _either(
        self, op: str, primary: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]
    ) -> T:
        """``primary()`` unless degraded; on the local store when it cannot answer."""
        if not self._degraded:
            try:
                return await primary()
            except UnavailableError as exc:
                self.note_unavailable(op, exc)
        return await local()

    async def _primary_only(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """What only the primary may answer: refused at once while degraded."""
        if self._degraded:
            raise StoreDegradedError(f"the store is unavailable ({op} does not fall back)")
        try:
            return await call()
        except UnavailableError as exc:
            self.note_unavailable(op, exc)
            raise StoreDegradedError(f"the store is unavailable ({op} does not fall back)") from exc

    # ------------------------------------------------------------------ store API

    async def ping(self) -> None:
        await self._either("ping", self.primary.ping, self.local.ping)

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
            raise ValueError("a fallback store records the durable queue's tasks apart")
        key = ("otp", user_id, record.purpose)
        if not self._degraded:
            try:
                refused = await self.primary.issue_otp(
                    user_id, record, limits, now, unless_suppressed=unless_suppressed, audit=audit
                )
            except UnavailableError as exc:
                self.note_unavailable("issue_otp", exc)
            else:
                if refused is None and self._here.pop(key, None) is not None:
                    self.local.forget_otp(user_id, record.purpose)  # superseded
                return refused
        # the local store holds no suppressions (see suppressions below)
        refused = await self.local.issue_otp(user_id, record, limits, now, audit=audit)
        if refused is None:
            self._here[key] = record.expires_at
        return refused

    def queues_with_codes(self) -> bool:
        return False  # a task accepted while degraded is kept locally, apart from its code

    async def verify_otp(
        self,
        user_id: str,
        purpose: str,
        code_hash: str,
        now: float,
        audit: AuditDraft | None = None,
    ) -> VerifyOutcome:
        if self._held(("otp", user_id, purpose), now):
            return await self.local.verify_otp(user_id, purpose, code_hash, now, audit)
        return await self._either(
            "verify_otp",
            lambda: self.primary.verify_otp(user_id, purpose, code_hash, now, audit),
            lambda: self.local.verify_otp(user_id, purpose, code_hash, now, audit),
        )

    async def issue_token(
        self, owner_ref: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        key = ("token", owner_ref, record.purpose)
        if not self._degraded:
            try:
                refused = await self.primary.issue_token(owner_ref, record, limits, now)
            except UnavailableError as exc:
                self.note_unavailable("issue_token", exc)
            else:
                if refused is None and self._here.pop(key, None) is not None:
                    self.local.forget_token(owner_ref, record.purpose)  # superseded
                return refused
        refused = await self.local.issue_token(owner_ref, record, limits, now)
        if refused is None:
            self._here[key] = record.expires_at
        return refused

    async def use_token(
        self, owner_ref: str, purpose: str, token_hash: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        if self._held(("token", owner_ref, purpose), now):
            return await self.local.use_token(owner_ref, purpose, token_hash, now, consume=consume)
        return await self._either(
            "use_token",
            lambda: self.primary.use_token(owner_ref, purpose, token_hash, now, consume=consume),
            lambda: self.local.use_token(owner_ref, purpose, token_hash, now, consume=consume),
        )

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float
    ) -> LimitExceeded | None:
        return await self._either(
            "hit_limits",
            lambda: self.primary.hit_limits(limits, member, now),
            lambda: self.local.hit_limits(limits, member, now),
        )

    async def capped_add(
        self, counter: str, amount: float, cap: float, ttl: int
    ) -> tuple[bool, float]:
        # a counter shared by every instance (the SMS budget): counting it locally would
        # let each instance spend the whole of it
        return await self._primary_only(
            "capped_add", lambda: self.primary.capped_add(counter, amount, cap, ttl)
        )

    async def put_task(self, record: TaskRecord, ttl: int) -> None:
        await self._either(
            "put_task",
            lambda: self.primary.put_task(record, ttl),
            lambda: self.local.put_task(record, ttl),
        )

    async def update_task(self, record: TaskRecord) -> None:
        if self.local.holds_task(record.task_id):
            await self.local.update_task(record)
            return
        # the record lives in the primary: a write elsewhere would be lost
        await self._primary_only("update_task", lambda: self.primary.update_task(record))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        if self.local.holds_task(task_id):
            return await self.local.get_task(task_id)
        # "no such task" would be a guess while the primary cannot be asked
        return await self._primary_only("get_task", lambda: self.primary.get_task(task_id))

    # The suppression list is otpd-wide: it is changed in the primary only. While degraded
    # it is read from the local store, which holds none: codes and messages keep going out
    # (what the fallback is for) rather than being refused for a list nobody can read.

    async def suppress(self, address_hash: str, record: Suppression, ttl: int) -> None:
        await self._primary_only(
            "suppress", lambda: self.primary.suppress(address_hash, record, ttl)
        )

    async def unsuppress(self, address_hash: str) -> bool:
        return await self._primary_only("unsuppress", lambda: self.primary.unsuppress(address_hash))

    async def suppressions(self, address_hashes: Sequence[str]) -> list[Suppression | None]:
        return await self._either(
            "suppressions",
            lambda: self.primary.suppressions(address_hashes),
            lambda: self.local.suppressions(address_hashes),
        )

    # SMS conversion is counted, and ranges blocked, across every instance: in the primary
    # only. While degraded nothing is counted or refused for it (the SMS guard goes on
    # without), as a local count would block ranges for one instance only.

    async def sms_sent(
        self, range_hash: str, sealed_prefix: str, rule: ConversionRule, now: float
    ) -> SmsBlock | None:
        return await self._primary_only(
            "sms_sent", lambda: self.primary.sms_sent(range_hash, sealed_prefix, rule, now)
        )

    async def sms_unsent(self, range_hash: str, rule: ConversionRule, now: float) -> None:
        await self._primary_only(
            "sms_unsent", lambda: self.primary.sms_unsent(range_hash, rule, now)
        )

    async def sms_verified(
        self, range_hash: str, issued_at: float, rule: ConversionRule, now: float
    ) -> None:
        await self._primary_only(
            "sms_verified", lambda: self.primary.sms_verified(range_hash, issued_at, rule, now)
        )

    async def sms_blocks(self, now: float) -> list[SmsBlock]:
        return await self._primary_only("sms_blocks", lambda: self.primary.sms_blocks(now))

    async def sms_unblock(self, range_hash: str, now: float) -> bool:
        return await self._primary_only(
            "sms_unblock", lambda: self.primary.sms_unblock(range_hash, now)
        )

    # Provider reports are linked and looked up in the primary only: a task delivered
    # from the local store while degraded gets no reports.

    async def link_message(self, ref: str, task_id: str, ttl: int) -> list[str]:
        return await self._primary_only(
            "link_message", lambda: self.primary.link_message(ref, task_id, ttl)
        )

    async def message_task(self, ref: str, event_ref: str, parked: str, ttl: int) -> str | None:
        return await self._primary_only(
            "message_task", lambda: self.primary.message_task(ref, event_ref, parked, ttl)
        )

    async def report_task(self, task_id: str, report: TaskReport) -> ReportOutcome:
        return await self._primary_only(
            "report_task", lambda: self.primary.report_task(task_id, report)
        )

    # A trail is written and read in the primary only: while degraded a code is issued
    # without one (its fallback cannot be sent) rather than refused.

    async def put_trail(self, trail: OtpTrail, sealed_fallback: str, ttl: int) -> None:
        await self._primary_only(
            "put_trail", lambda: self.primary.put_trail(trail, sealed_fallback, ttl)
        )

    async def get_trail(self, otp_id: str) -> OtpTrail | None:
        return await self._primary_only("get_trail", lambda: self.primary.get_trail(otp_id))

    async def take_fallback(
        self, otp_id: str, failed_task_id: str, delivery: TrailDelivery, now: float
    ) -> str | None:
        return await self._primary_only(
            "take_fallback",
            lambda: self.primary.take_fallback(otp_id, failed_task_id, delivery, now),
        )

    async def trail_verified(self, otp_id: str, now: float) -> None:
        await self._primary_only("trail_verified", lambda: self.primary.trail_verified(otp_id, now))

    async def claim(self, scope: str, ref: str, fingerprint: str, ttl: int) -> Claim:
        key = ("claim", scope, ref)
        if self._held(key, self._clock.time()):
            return await self.local.claim(scope, ref, fingerprint, ttl)
        if not self._degraded:
            try:
                return await self.primary.claim(scope, ref, fingerprint, ttl)
            except UnavailableError as exc:
                self.note_unavailable("claim", exc)
        found = await self.local.claim(scope, ref, fingerprint, ttl)
        if found.state is ClaimState.CLAIMED:
            self._here[key] = self._clock.time() + ttl
        return found

    async def settle(self, scope: str, ref: str, fingerprint: str, value: str, ttl: int) -> None:
        key = ("claim", scope, ref)
        if self._held(key, self._clock.time()):
            await self.local.settle(scope, ref, fingerprint, value, ttl)
            self._here[key] = self._clock.time() + ttl
            return
        await self._either(
            "settle",
            lambda: self.primary.settle(scope, ref, fingerprint, value, ttl),
            lambda: self.local.settle(scope, ref, fingerprint, value, ttl),
        )

    async def release(self, scope: str, ref: str, fingerprint: str) -> None:
        key = ("claim", scope, ref)
        if self._held(key, self._clock.time()):
            await self.local.release(scope, ref, fingerprint)
            self._here.pop(key, None)  # the key is free again, for the primary too
            return
        await self._either(
            "release",
            lambda: self.primary.release(scope, ref, fingerprint),
            lambda: self.local.release(scope, ref, fingerprint),
        )

    # ------------------------------------------------------------------ audit

    async def append_audit(
        self, record: dict[str, str], user_id: str | None, retention_ms: int, now: float
    ) -> str:
        # a record kept locally is better than none (and the log line has it anyway)
        return await self._either(
            "append_audit",
            lambda: self.primary.append_audit(record, user_id, retention_ms, now),
            lambda: self.local.append_audit(record, user_id, retention_ms, now),
        )

    async def append_audits(self, entries: Sequence[AuditEntry], retention_ms: int) -> list[str]:
        return await self._either(
            "append_audit",
            lambda: self.primary.append_audits(entries, retention_ms),
            lambda: self.local.append_audits(entries, retention_ms),
        )

    async def audit_events(
        self,
        user_id: str | None,
        event: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        cursor: str | None,
    ) -> AuditPage:
        """The primary's records and those kept locally during outages, merged by id
        (both are times of this clock); only the local ones while degraded."""
        local = await self.local.audit_events(user_id, event, since, until, limit, cursor)
        if self._degraded:
            return local
        try:
            primary = await self.primary.audit_events(user_id, event, since, until, limit, cursor)
        except UnavailableError as exc:
            self.note_unavailable("audit_events", exc)
            return local
        return _merged(primary, local, limit)

    # ------------------------------------------------------------------ TOTP
    # An enrolment is long-lived and its replay check must be the one of every instance:
    # a local copy could accept a code another instance accepted already. TOTP never falls
    # back; it answers 503 (StoreDegradedError) while the primary cannot be reached.

    async def totp_begin(
        self, user_id: str, record: TotpRecord, expires_at: float, now: float
    ) -> bool:
        return await self._primary_only(
            "totp_begin", lambda: self.primary.totp_begin(user_id, record, expires_at, now)
        )

    async def totp_get(self, user_id: str, *, pending: bool, now: float) -> TotpRecord | None:
        return await self._primary_only(
            "totp_get", lambda: self.primary.totp_get(user_id, pending=pending, now=now)
        )

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
        return await self._primary_only(
            "totp_check",
            lambda: self.primary.totp_check(
                user_id, sealed_secret, steps, lockout, member, now, confirm=confirm
            ),
        )

    async def totp_use_recovery(
        self, user_id: str, code_hash: str, lockout: Limit, member: str, now: float
    ) -> TotpOutcome:
        return await self._primary_only(
            "totp_use_recovery",
            lambda: self.primary.totp_use_recovery(user_id, code_hash, lockout, member, now),
        )

    async def totp_set_recovery(self, user_id: str, code_hashes: Sequence[str]) -> bool:
        return await self._primary_only(
            "totp_set_recovery", lambda: self.primary.totp_set_recovery(user_id, code_hashes)
        )

    async def totp_delete(self, user_id: str) -> bool:
        return await self._primary_only("totp_delete", lambda: self.primary.totp_delete(user_id))


def _merged(a: AuditPage, b: AuditPage, limit: int) -> AuditPage:
    """Two pages newest first as one: a next cursor when either had more or the two hold
    more than ``limit``; with no record in either, the cursor that read less far."""

    def key(entry: dict[str, str]) -> tuple[int, int]:
        return parse_audit_id(entry["id"]) or (0, 0)

    events = sorted(a[0] + b[0], key=key, reverse=True)
    if len(events) > limit:
        return events[:limit], events[limit - 1]["id"]
    if events:
        return events, events[-1]["id"] if a[1] or b[1] else None
    cursors = [c for c in (a[1], b[1]) if c is not None]
    return [], max(cursors, key=lambda c: parse_audit_id(c) or (0, 0)) if cursors else None
