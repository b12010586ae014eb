"""In-memory backend for development and embedding: same semantics as Redis, one process.

Every operation runs without awaiting in between, so on one event loop it is atomic.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from otpd.clock import Clock, SystemClock
from otpd.errors import UnavailableError
from otpd.models import TaskRecord, VerifyReason, VerifyResult
from otpd.store.base import (
    Limit,
    LimitExceeded,
    OtpRecord,
    TokenCheck,
    TokenOutcome,
    TokenRecord,
    VerifyOutcome,
)
from otpd.store.keys import KeyLayout

__all__ = ["MemoryStore"]

_SWEEP_EVERY = 1024


class MemoryStore:
    """The ``memory`` backend: nothing survives the process, nothing is shared."""

    def __init__(self, *, key_prefix: str = "otpd:", clock: Clock | None = None) -> None:
        self._keys = KeyLayout(key_prefix)
        self._clock = clock or SystemClock()
        # key -> (value, expires_at); values are dicts, lists of hit times or strings
        self._data: dict[str, tuple[Any, float]] = {}
        self._ops = 0
        self._closed = False

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
        self._data.clear()

    # ------------------------------------------------------------------ plumbing

    def _get(self, key: str, now: float | None = None) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= (self._clock.time() if now is None else now):
            del self._data[key]
            return None
        return entry[0]

    def _set(self, key: str, value: Any, expires_at: float) -> None:
        self._data[key] = (value, expires_at)
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            now = self._clock.time()
            for k in [k for k, (_, exp) in self._data.items() if exp <= now]:
                del self._data[k]

    def _window(self, lim: Limit, now: float) -> dict[str, float]:
        """member -> hit time, for hits still inside the window (like a Redis zset)."""
        hits: dict[str, float] = self._get(self._limit_key(lim), now) or {}
        return {m: t for m, t in hits.items() if t > now - lim.window}

    def _check(self, limits: Sequence[Limit], now: float, member: str) -> LimitExceeded | None:
        worst: LimitExceeded | None = None
        for lim in limits:
            hits = self._window(lim, now)
            if len(hits) >= lim.limit and not (lim.distinct and (lim.member or member) in hits):
                times = sorted(hits.values())
                retry = times[len(times) - lim.limit] + lim.window - now
                if worst is None or retry > worst.retry_after:
                    worst = LimitExceeded(lim.scope, max(0.0, retry))
        return worst

    def _limit_key(self, lim: Limit) -> str:
        return self._keys.limit(lim.bucket, lim.window)

    def _record(self, limits: Sequence[Limit], now: float, member: str) -> None:
        for lim in limits:
            hits = self._window(lim, now)
            hits[lim.member or member] = now
            self._set(self._limit_key(lim), hits, now + lim.window)

    # ------------------------------------------------------------------ store API

    async def ping(self) -> None:
        if self._closed:
            raise UnavailableError("the store is closed")

    async def issue_otp(
        self, user_id: str, record: OtpRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        key = self._keys.otp(user_id, record.purpose)
        refused = self._check(limits, now, record.otp_id)
        if refused:
            return refused
        self._record(limits, now, record.otp_id)
        self._set(key, {**dataclasses.asdict(record), "attempts": 0}, record.expires_at)
        return None

    async def verify_otp(
        self, user_id: str, purpose: str, code_hash: str, now: float
    ) -> VerifyOutcome:
        key = self._keys.otp(user_id, purpose)
        rec = self._get(key, now)
        if rec is None:
            return VerifyOutcome(VerifyResult(False, VerifyReason.NO_ACTIVE_CODE, 0))
        ids = (rec["otp_id"], rec["channel"])
        if rec["attempts"] >= rec["max_attempts"]:
            return VerifyOutcome(VerifyResult(False, VerifyReason.TOO_MANY_ATTEMPTS, 0), *ids)
        if hmac.compare_digest(rec["code_hash"], code_hash):
            del self._data[key]
            return VerifyOutcome(VerifyResult(True), *ids)
        rec["attempts"] += 1
        left = rec["max_attempts"] - rec["attempts"]
        return VerifyOutcome(VerifyResult(False, VerifyReason.INVALID_CODE, left), *ids)

    async def issue_token(
        self, owner_ref: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        key = self._keys.token(owner_ref, record.purpose)
        refused = self._check(limits, now, record.token_id)
        if refused:
            return refused
        self._record(limits, now, record.token_id)
        self._set(key, dataclasses.replace(record), record.expires_at)
        return None

    async def use_token(
        self, owner_ref: str, purpose: str, token_hash: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        key = self._keys.token(owner_ref, purpose)
        entry = self._data.get(key)
        if entry is None:
            return TokenOutcome(TokenCheck.UNKNOWN)
        rec: TokenRecord = entry[0]
        # the record's own expires_at, not the entry's, mirrors the Redis script exactly
        if now >= rec.expires_at:
            del self._data[key]
            return TokenOutcome(TokenCheck.EXPIRED, user_id=rec.user_id)
        if rec.purpose != purpose or not hmac.compare_digest(rec.token_hash, token_hash):
            return TokenOutcome(TokenCheck.MISMATCH, user_id=rec.user_id)
        if consume:
            del self._data[key]
        return TokenOutcome(TokenCheck.OK, dataclasses.replace(rec), rec.user_id)

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float
    ) -> LimitExceeded | None:
        refused = self._check(limits, now, member)
        if refused is None:
            self._record(limits, now, member)
        return refused

    async def capped_add(
        self, counter: str, amount: float, cap: float, ttl: int
    ) -> tuple[bool, float]:
        key = self._keys.counter(counter)
        current = float(self._get(key) or 0.0)
        if current + amount > cap:
            return False, current
        self._set(key, current + amount, self._clock.time() + ttl)
        return True, current + amount

    async def put_task(self, record: TaskRecord, ttl: int) -> None:
        self._set(
            self._keys.task(record.task_id), dataclasses.replace(record), record.created_at + ttl
        )

    async def update_task(self, record: TaskRecord) -> None:
        key = self._keys.task(record.task_id)
        entry = self._data.get(key)
        if entry is not None:
            self._data[key] = (dataclasses.replace(record), entry[1])

    async def get_task(self, task_id: str) -> TaskRecord | None:
        rec = self._get(self._keys.task(task_id))
        return None if rec is None else dataclasses.replace(rec)

    async def remember(self, scope: str, ref: str, value: str, ttl: int) -> str | None:
        key = self._keys.remembered(scope, ref)
        existing = self._get(key)
        if existing is not None:
            return str(existing)
        self._set(key, value, self._clock.time() + ttl)
        return None
