"""The store contract runs on every registered backend, a wrapper registered here included:
a new backend is one class, one ``register_backend`` line and this suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

import pytest

from otpd.clock import FakeClock
from otpd.config import StoreConfig, load_config
from otpd.metrics import Metrics
from otpd.models import TaskRecord
from otpd.store import (
    AuditEntry,
    AuditPage,
    Claim,
    Limit,
    LimitExceeded,
    OtpRecord,
    Store,
    StoreDeps,
    TokenOutcome,
    TokenRecord,
    VerifyOutcome,
    create_store,
    register_backend,
)
from otpd.store.base import (
    AuditDraft,
    ConversionRule,
    QueuedTask,
    SmsBlock,
    Suppressed,
    Suppression,
    TotpOutcome,
    TotpRecord,
)
from otpd.store.memory import MemoryStore
from otpd.store.reports import ReportOutcome, TaskReport
from otpd.store.trails import OtpTrail, TrailDelivery


class WrappedStore:
    """A third backend as an outsider would write one: every operation delegated, with a
    count of the calls, to a store it owns."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls = 0

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def ping(self) -> None:
        self.calls += 1
        await self.inner.ping()

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
        self.calls += 1
        return await self.inner.issue_otp(
            user_id,
            record,
            limits,
            now,
            unless_suppressed=unless_suppressed,
            enqueue=enqueue,
            audit=audit,
        )

    def queues_with_codes(self) -> bool:
        return self.inner.queues_with_codes()

    async def verify_otp(
        self,
        user_id: str,
        purpose: str,
        code_hash: str,
        now: float,
        audit: AuditDraft | None = None,
    ) -> VerifyOutcome:
        self.calls += 1
        return await self.inner.verify_otp(user_id, purpose, code_hash, now, audit)

    async def issue_token(
        self, owner_ref: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        self.calls += 1
        return await self.inner.issue_token(owner_ref, record, limits, now)

    async def use_token(
        self, owner_ref: str, purpose: str, token_hash: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        self.calls += 1
        return await self.inner.use_token(owner_ref, purpose, token_hash, now, consume=consume)

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float
    ) -> LimitExceeded | None:
        self.calls += 1
        return await self.inner.hit_limits(limits, member, now)

    async def capped_add(
        self, counter: str, amount: float, cap: float, ttl: int
    ) -> tuple[bool, float]:
        self.calls += 1
        return await self.inner.capped_add(counter, amount, cap, ttl)

    async def put_task(self, record: TaskRecord, ttl: int) -> None:
        self.calls += 1
        await self.inner.put_task(record, ttl)

    async def update_task(self, record: TaskRecord) -> None:
        self.calls += 1
        await self.inner.update_task(record)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        self.calls += 1
        return await self.inner.get_task(task_id)

    async def suppress(self, address_hash: str, record: Suppression, ttl: int) -> None:
        self.calls += 1
        await self.inner.suppress(address_hash, record, ttl)

    async def unsuppress(self, address_hash: str) -> bool:
        self.calls += 1
        return await self.inner.unsuppress(address_hash)

    async def suppressions(self, address_hashes: Sequence[str]) -> list[Suppression | None]:
        self.calls += 1
        return await self.inner.suppressions(address_hashes)

    async def sms_sent(
        self, range_hash: str, sealed_prefix: str, rule: ConversionRule, now: float
    ) -> SmsBlock | None:
        self.calls += 1
        return await self.inner.sms_sent(range_hash, sealed_prefix, rule, now)

    async def sms_unsent(self, range_hash: str, rule: ConversionRule, now: float) -> None:
        self.calls += 1
        await self.inner.sms_unsent(range_hash, rule, now)

    async def sms_verified(
        self, range_hash: str, issued_at: float, rule: ConversionRule, now: float
    ) -> None:
        self.calls += 1
        await self.inner.sms_verified(range_hash, issued_at, rule, now)

    async def sms_blocks(self, now: float) -> list[SmsBlock]:
        self.calls += 1
        return await self.inner.sms_blocks(now)

    async def sms_unblock(self, range_hash: str, now: float) -> bool:
        self.calls += 1
        return await self.inner.sms_unblock(range_hash, now)

    async def claim(self, scope: str, ref: str, fingerprint: str, ttl: int) -> Claim:
        self.calls += 1
        return await self.inner.claim(scope, ref, fingerprint, ttl)

    async def settle(self, scope: str, ref: str, fingerprint: str, value: str, ttl: int) -> None:
        self.calls += 1
        await self.inner.settle(scope, ref, fingerprint, value, ttl)

    async def release(self, scope: str, ref: str, fingerprint: str) -> None:
        self.calls += 1
        await self.inner.release(scope, ref, fingerprint)

    async def append_audit(
        self, record: dict[str, str], user_id: str | None, retention_ms: int, now: float
    ) -> str:
        self.calls += 1
        return await self.inner.append_audit(record, user_id, retention_ms, now)

    async def append_audits(self, entries: Sequence[AuditEntry], retention_ms: int) -> list[str]:
        self.calls += 1
        return await self.inner.append_audits(entries, retention_ms)

    async def audit_events(
        self,
        user_id: str | None,
        event: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        cursor: str | None,
    ) -> AuditPage:
        self.calls += 1
        return await self.inner.audit_events(user_id, event, since, until, limit, cursor)

    async def totp_begin(
        self, user_id: str, record: TotpRecord, expires_at: float, now: float
    ) -> bool:
        self.calls += 1
        return await self.inner.totp_begin(user_id, record, expires_at, now)

    async def totp_get(self, user_id: str, *, pending: bool, now: float) -> TotpRecord | None:
        self.calls += 1
        return await self.inner.totp_get(user_id, pending=pending, now=now)

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
        self.calls += 1
        return await self.inner.totp_check(
            user_id, sealed_secret, steps, lockout, member, now, confirm=confirm
        )

    async def totp_use_recovery(
        self, user_id: str, code_hash: str, lockout: Limit, member: str, now: float
    ) -> TotpOutcome:
        self.calls += 1
        return await self.inner.totp_use_recovery(user_id, code_hash, lockout, member, now)

    async def totp_set_recovery(self, user_id: str, code_hashes: Sequence[str]) -> bool:
        self.calls += 1
        return await self.inner.totp_set_recovery(user_id, code_hashes)

    async def totp_delete(self, user_id: str) -> bool:
        self.calls += 1
        return await self.inner.totp_delete(user_id)

    async def link_message(self, ref: str, task_id: str, ttl: int) -> list[str]:
        self.calls += 1
        return await self.inner.link_message(ref, task_id, ttl)

    async def message_task(self, ref: str, event_ref: str, parked: str, ttl: int) -> str | None:
        self.calls += 1
        return await self.inner.message_task(ref, event_ref, parked, ttl)

    async def report_task(self, task_id: str, report: TaskReport) -> ReportOutcome:
        self.calls += 1
        return await self.inner.report_task(task_id, report)

    async def put_trail(self, trail: OtpTrail, sealed_fallback: str, ttl: int) -> None:
        self.calls += 1
        await self.inner.put_trail(trail, sealed_fallback, ttl)

    async def get_trail(self, otp_id: str) -> OtpTrail | None:
        self.calls += 1
        return await self.inner.get_trail(otp_id)

    async def take_fallback(
        self, otp_id: str, failed_task_id: str, delivery: TrailDelivery, now: float
    ) -> str | None:
        self.calls += 1
        return await self.inner.take_fallback(otp_id, failed_task_id, delivery, now)

    async def trail_verified(self, otp_id: str, now: float) -> None:
        self.calls += 1
        await self.inner.trail_verified(otp_id, now)


def _wrapped(config: StoreConfig, deps: StoreDeps) -> Store:
    return WrappedStore(MemoryStore(key_prefix=config.key_prefix, clock=deps.clock))


register_backend("wrapped", _wrapped)


@pytest.fixture(params=["memory", "redis", "wrapped", "fallback", "cluster", "sentinel"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every registered backend, for the contract suite (``fallback``: Redis behind
    ``store.fallback = "memory"``, while Redis answers; ``cluster`` and ``sentinel``: the
    Redis backend in those modes, on the session's real topologies)."""
    value: str = request.param
    return value


@pytest.fixture
async def store(
    backend: str, request: pytest.FixtureRequest, key_prefix: str, clock: FakeClock
) -> AsyncIterator[Store]:
    """A store of ``backend`` made through the registry, as the daemon makes it."""
    data: dict[str, object] = {"key_prefix": key_prefix}
    name = "redis" if backend in ("fallback", "cluster", "sentinel") else backend
    if backend == "cluster":
        seed = request.getfixturevalue("redis_cluster_env").seed_url
        data.update(backend="redis", mode="cluster", redis_url=seed)
    elif backend == "sentinel":
        topology = request.getfixturevalue("redis_sentinel_env")
        data.update(
            backend="redis",
            mode="sentinel",
            sentinel_urls=list(topology.sentinel_urls),
            sentinel_service=topology.service,
        )
    elif name == "redis":
        data.update(backend="redis", redis_url=request.getfixturevalue("redis_url"))
    if backend == "fallback":
        data.update(fallback="memory")
    config = load_config(data={"store": data}, env={}).store
    async with create_store(name, config, StoreDeps(clock=clock, metrics=Metrics())) as made:
        yield made
