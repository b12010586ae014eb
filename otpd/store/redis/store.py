"""The Redis store: one Lua script per operation, one round trip each."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from types import TracebackType
from typing import Any, Self, TypeVar, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.retry import Retry

from otpd.config import StoreConfig
from otpd.config.sections import sentinel_addresses
from otpd.errors import UnavailableError
from otpd.metrics import Metrics
from otpd.models import Channel, TaskRecord, TaskStatus, VerifyReason, VerifyResult
from otpd.store.base import (
    AUDIT_GLOBAL_CAP,
    TOKEN_FIELDS,
    TOTP_FIELDS,
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
    parse_audit_id,
)
from otpd.store.keys import KeyLayout
from otpd.store.redis.errors import (
    StoreHealth,
    UnreplicatedWrite,
    error_kind,
    failure_reason,
    masked_url,
)
from otpd.store.redis.pool import LeanPool, LeanSentinelPool
from otpd.store.reports import PARKED_MAX, ReportOutcome, TaskReport
from otpd.store.trails import OtpTrail, TrailDelivery, dump_deliveries, load_deliveries

__all__ = ["RedisStore", "load_script", "parse_suppression", "parse_task", "task_fields"]

T = TypeVar("T")

_SCRIPTS = (
    "put_limited",
    "verify_otp",
    "hit_limits",
    "capped_add",
    "use_token",
    "reserve_limits",
    "release_limits",
    "settle_claim",
    # the durable delivery queue (otpd.store.redis.streams)
    "task_put",
    "task_enqueue",
    "task_update",
    "task_start",
    "task_ack",
    "task_finish",
    "hashes_of",
    "task_retry",
    "task_promote",
    "task_replay",
    # provider reports (otpd.services.deliveries)
    "message_link",
    "message_task",
    "task_report",
    # the suppression list (otpd.services.suppressions)
    "suppress",
    "unsuppress",
    # SMS conversion per number range (otpd.services.sms_guard)
    "sms_sent",
    "sms_credit",
    "sms_unblock",
    # the trails of codes issued with a fallback (otpd.services.fallback)
    "trail_take",
    "trail_verified",
    "audit_append",
    # TOTP (otpd.services.totp)
    "totp_begin",
    "totp_check",
    "totp_recovery",
    "totp_set_recovery",
    "totp_delete",
)

# The most blocked number ranges GET /v1/sms/blocks lists (the soonest to expire first).
_BLOCKS_MAX = 1000

# An audit query with an event filter reads the stream in batches, at most this many
# entries per call; past that it answers what it found and a cursor to go on from.
_AUDIT_BATCH = 500
_AUDIT_SCAN_MAX = 10_000

# The fields of multi-value script replies, named once here (the scripts say the same).
_LIMITS_REPLY = ("allowed", "index", "retry_ms")  # limits.lua, put_limited, hit_limits
_VERIFY_REPLY = (  # verify_otp.lua
    "reason",
    "attempts_left",
    "otp_id",
    "channel",
    "range_hash",
    "created_at",
    "tracked",
)
_BLOCK_FIELDS = ("reason", "blocked_at", "expires_at", "sent", "verified", "prefix")


def _reply(names: tuple[str, ...], values: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(names, values, strict=False))


def load_script(name: str, *, shebang: bool = False) -> str:
    """The source of a Lua script with the shared limits prelude in front of it.

    With ``shebang`` (Redis 7+) the script declares itself: Redis then refuses a writing
    script up front when it is out of memory, instead of letting it write past
    ``maxmemory`` once its first command wrote (what a script without flags may do).
    """
    lua = resources.files("otpd.store.redis") / "lua"
    source = (lua / "limits.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
    if not shebang:
        return source
    return ("#!lua flags=no-writes\n" if name in _READ_ONLY else "#!lua\n") + source


# scripts that only read: Redis runs them when it is out of memory too
_READ_ONLY = frozenset({"hashes_of"})


_MASTER_CHECK_SECONDS = 0.5  # sentinel mode: how often the master's address is checked


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def task_mutable(record: TaskRecord) -> dict[str, Any]:
    """The fields of a task record that change as it moves on."""
    return {
        "status": record.status.value,
        "attempts": record.attempts,
        "provider": record.provider,
        "provider_message_id": record.provider_message_id,
        "last_error": record.last_error,
        "updated_at": record.updated_at,
    }


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _flat(record: Any) -> dict[str, Any]:
    """A flat dataclass record's fields by name: ``dataclasses.asdict`` without its deep
    copy (the records stored as hashes hold only strings, numbers and booleans)."""
    kind = type(record)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(record))
    return {name: getattr(record, name) for name in names}


def task_fields(record: TaskRecord) -> dict[str, Any]:
    """Every stored field of a task record (the hash the task key holds)."""
    return {
        "task_id": record.task_id,
        "channel": record.channel.value,
        "tag": record.tag,
        "created_at": record.created_at,
        "otp_id": record.otp_id,
        **task_mutable(record),
    }


def parse_task(raw: Mapping[str, str]) -> TaskRecord | None:
    """The record of a stored hash; None when it is gone or not a task."""
    if not raw or "channel" not in raw:
        return None
    return TaskRecord(
        task_id=raw["task_id"],
        channel=Channel(raw["channel"]),
        status=TaskStatus(raw["status"]),
        tag=raw.get("tag", ""),
        created_at=float(raw["created_at"]),
        updated_at=float(raw["updated_at"]),
        attempts=int(raw["attempts"]),
        provider=raw.get("provider", ""),
        last_error=raw.get("last_error", ""),
        provider_message_id=raw.get("provider_message_id", ""),
        delivered_at=float(raw.get("delivered_at") or 0),
        reason=raw.get("reason", ""),
        otp_id=raw.get("otp_id", ""),
    )


def parse_suppression(raw: Mapping[str, str]) -> Suppression | None:
    """A suppression entry as read (None for no entry)."""
    if not raw or "reason" not in raw:
        return None
    return Suppression(
        display=raw.get("display", ""),
        reason=raw["reason"],
        source=raw.get("source", ""),
        since=float(raw.get("since") or 0),
    )


def _parse_trail(otp_id: str, raw: Mapping[str, str]) -> OtpTrail | None:
    if not raw or "deliveries" not in raw:
        return None
    return OtpTrail(
        otp_id=otp_id,
        created_at=float(raw["created_at"]),
        expires_at=float(raw["expires_at"]),
        fallback_channel=raw["fallback_channel"],
        fallback_until=float(raw["fallback_until"]),
        deliveries=load_deliveries(raw["deliveries"]),
        verified_at=float(raw.get("verified_at") or 0),
        fell_back_at=float(raw.get("fell_back_at") or 0),
    )


class RedisStore:
    """The production store. Open with ``async with RedisStore(config) as store``."""

    def __init__(
        self, config: StoreConfig, *, metrics: Metrics | None = None, partitions: int = 16
    ) -> None:
        self.config = config
        self.layout = KeyLayout(config.key_prefix, partitions)  # public for tools and tests
        self._health = StoreHealth(metrics or Metrics())
        self._redis: aioredis.Redis | None = None
        # the lean pool of a standalone or sentinel client, whose scripts skip the client's
        # command machinery; None for a cluster or a closed store
        self._lean: LeanPool | LeanSentinelPool | None = None
        self._sentinels: list[aioredis.Redis] = []  # the clients that ask where the master is
        self._watch: asyncio.Task[None] | None = None
        # at most max_connections operations at once, waiting up to pool_timeout_seconds
        # for a turn (see call): redis-py's pools refuse past their size
        self._gate = asyncio.Semaphore(config.max_connections)
        self._scripts: dict[str, AsyncScript] = {}
        # sentinel mode: replicas that must have each write before it is answered
        self._acks = config.replica_acks if config.mode == "sentinel" else 0
        self._ack_ms = _ms(config.replica_ack_timeout_seconds)

    async def __aenter__(self) -> Self:
        if self._redis is not None:
            raise RuntimeError("RedisStore is already open")
        self._redis = self._client()
        pool = getattr(self._redis, "connection_pool", None)  # a cluster client has none
        self._lean = pool if isinstance(pool, LeanPool | LeanSentinelPool) else None
        if self._lean is not None:
            self._lean.deadline = self.config.socket_timeout_seconds
        if self.config.mode == "sentinel":
            self._watch = asyncio.create_task(self._follow_master(), name="otpd-sentinel-watch")

        async def load() -> None:
            assert self._redis is not None
            await self._redis.ping()
            shebang = await self._knows_shebangs()
            for name in _SCRIPTS:
                script = self._redis.register_script(load_script(name, shebang=shebang))
                # Loaded once here so every later call is a single EVALSHA.
                await self._redis.script_load(script.script)
                self._scripts[name] = script

        try:
            await self.call("open", load)
        except UnavailableError as exc:
            await self.aclose()
            # the one line `otpd serve` prints: which store, and why it cannot be reached
            cause = exc.__cause__ or exc
            where = masked_url(self.config.redis_url)
            raise UnavailableError(
                f"cannot reach the store at {where}: {failure_reason(cause)}"
            ) from cause
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _knows_shebangs(self) -> bool:
        """Whether the server reads script flags (Redis 7+); older ones run plain scripts."""
        assert self._redis is not None
        try:
            await self._redis.script_load("#!lua\nreturn 1")
        except redis_errors.ResponseError:
            return False
        return True

    @property
    def cluster(self) -> bool:
        """Keys live on several nodes: every script must stay within one slot."""
        return self.config.mode == "cluster"

    def _client(self) -> aioredis.Redis:
        """The client for ``store.mode``; each one retries MOVED/ASK and follows a failover
        by itself, and every error left over is mapped in :meth:`call`."""
        cfg = self.config
        common: dict[str, Any] = {
            # standalone and sentinel: one deadline per operation (see _call) instead of
            # redis-py's timer per command sent and per reply read
            "socket_timeout": cfg.socket_timeout_seconds if cfg.mode == "cluster" else None,
            "socket_connect_timeout": cfg.socket_timeout_seconds,
            "decode_responses": True,
        }
        if cfg.mode == "cluster":
            cluster = RedisCluster.from_url(
                cfg.redis_url,
                max_connections=cfg.max_connections,
                # redis-py's default (10 tries, up to 1 s apart) holds a request for seconds
                # when a primary dies; a few quick tries follow a MOVED or a failover, and
                # past them the caller gets a clean 503 within about the socket timeout
                retry=Retry(ExponentialWithJitterBackoff(cap=0.1, base=0.01), 3),
                **common,
            )
            # one client type for the callers: the cluster client speaks the same commands
            return cast(aioredis.Redis, cluster)
        if cfg.mode == "sentinel":
            url = urlsplit(cfg.redis_url)
            db = int(url.path.strip("/") or 0)
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                sentinel_addresses(cfg.sentinel_urls),
                sentinel_kwargs={
                    "socket_timeout": cfg.socket_timeout_seconds,
                    "socket_connect_timeout": cfg.socket_timeout_seconds,
                },
                **common,
            )
            self._sentinels = list(sentinel.sentinels)
            client = sentinel.master_for(
                cfg.sentinel_service,
                db=db,
                username=url.username,
                password=url.password,
                ssl=url.scheme == "rediss",
                max_connections=cfg.max_connections,
                connection_pool_class=LeanSentinelPool,
            )
            return cast(aioredis.Redis, client)
        pool = LeanPool.from_url(cfg.redis_url, max_connections=cfg.max_connections, **common)
        return aioredis.Redis(connection_pool=pool)

    async def _follow_master(self) -> None:
        """Ask the sentinels where the master is, twice a second. redis-py asks only when
        it opens a connection, so after a failover its pooled connections would go on
        writing to the demoted primary, which drops those writes when it resyncs. On a
        change the pool drops its idle connections and each busy one when it comes back."""
        while True:
            await asyncio.sleep(_MASTER_CHECK_SECONDS)
            redis = self._redis
            if redis is None:
                return
            pool = redis.connection_pool
            if isinstance(pool, SentinelConnectionPool):
                with contextlib.suppress(Exception):  # sentinels unreachable: keep the last
                    await pool.get_master_address()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        self._lean = None
        if self._redis is not None:
            redis, self._redis = self._redis, None
            if isinstance(redis, RedisCluster):
                await redis.aclose()
            else:
                await redis.aclose(close_connection_pool=True)
            sentinels, self._sentinels = self._sentinels, []
            for client in sentinels:
                await client.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise UnavailableError("the store is not open")
        return self._redis

    async def call(self, op: str, fn: Callable[[], Awaitable[T]], *, timed: bool = True) -> T:
        """Run one store operation; every redis-py failure becomes UnavailableError.
        ``timed=False``: ``fn`` keeps to store.socket_timeout_seconds by itself (a lean
        pool's script batch has that deadline), so no timer of its own is set."""
        gate = self._gate
        if gate.locked():
            # every connection is busy: wait for one as long as store.pool_timeout_seconds
            # allows (redis-py's own waiting pool costs a lock and a timer on every call,
            # busy or not; a free turn here costs nothing)
            try:
                async with asyncio.timeout(self.config.pool_timeout_seconds):
                    await gate.acquire()
            except TimeoutError:
                self._health.failed(op, "pool_exhausted", TimeoutError())
                raise UnavailableError("the store is unavailable (no free connection)") from None
        else:
            await gate.acquire()
        try:
            return await self._call(op, fn, timed)
        finally:
            gate.release()

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]], timed: bool) -> T:
        try:
            if self.cluster or not timed:
                # the cluster client times each command and retries by itself
                result = await fn()
            else:
                async with asyncio.timeout(self.config.socket_timeout_seconds):
                    result = await fn()
        except Exception as exc:
            kind = error_kind(exc)
            if kind is None:
                raise
            self._health.failed(op, kind, exc)
            if kind == "connection":
                await self._drop_idle_connections()
            raise UnavailableError("the store is unavailable") from exc
        self._health.answered()
        return result

    async def _drop_idle_connections(self) -> None:
        """A lost connection means the idle pooled ones are most likely dead too (a
        restarted server): close them, so that each does not fail one more call once the
        server is back. A cluster client looks after its nodes' connections itself."""
        client = self._redis
        if client is None or isinstance(client, RedisCluster):
            return
        with contextlib.suppress(Exception):  # closing what is broken may fail too
            await client.connection_pool.disconnect(inuse_connections=False)

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            # never opened (a fallback serves until it does) or closed
            raise UnavailableError("the store is not open")
        if self._acks:
            return await self.call(name, lambda: self._replicated_script(script, keys, args))
        pool = self._lean
        if pool is not None:
            return await self.call(
                name, lambda: pool.run_script(script.sha, script.script, keys, args), timed=False
            )
        return await self.call(name, lambda: script(keys=list(keys), args=list(args)))

    async def _replicated_script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """``EVALSHA`` then ``WAIT`` on the same connection, in one round trip."""
        sha = script.sha
        (reply,) = await self._pipeline(
            lambda pipe: pipe.evalsha(sha, len(keys), *keys, *args), script
        )
        return reply

    async def _pipeline(
        self, add: Callable[[Any], object], script: AsyncScript | None = None
    ) -> list[Any]:
        """The replies of the commands ``add`` puts in a pipeline, sent in one round trip;
        with ``store.replica_acks``, followed by ``WAIT`` on the same connection, and
        :class:`UnreplicatedWrite` unless that many replicas acknowledged. A primary a
        failover just promoted may not have ``script`` cached yet: it is loaded and the
        pipeline sent again."""
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                add(pipe)
                if self._acks:
                    pipe.execute_command("WAIT", self._acks, self._ack_ms)
                replies = list(await pipe.execute(raise_on_error=False))
            acked = replies.pop() if self._acks else None
            failed = [r for r in replies if isinstance(r, Exception)]
            if failed:
                unknown = all(isinstance(r, redis_errors.NoScriptError) for r in failed)
                if attempt == 1 and script is not None and unknown:
                    await self.redis.script_load(script.script)
                    continue
                raise failed[0]
            if isinstance(acked, Exception):
                raise acked
            if acked is not None and int(acked) < self._acks:
                raise UnreplicatedWrite(f"{acked} of {self._acks} replicas acknowledged the write")
            return replies
        raise AssertionError("unreachable")

    async def hashes(self, op: str, keys: Sequence[str]) -> list[dict[str, str]]:
        """The fields of each hash in ``keys`` (``{}`` for a key that is gone), in one
        round trip: one read-only script where its keys may share a node and no write
        waits for replicas, else a pipeline of ``HGETALL`` (a cluster spreads the keys
        over slots; ``WAIT`` after a read would refuse it for replicas behind)."""
        if not keys:
            return []
        if self._lean is not None and not self._acks:  # no lean pool on a cluster
            replies = await self.script("hashes_of", keys, [])
            return [dict(zip(r[::2], r[1::2], strict=True)) for r in replies]

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    _ = pipe.hgetall(key)
                return await pipe.execute()

        return [r or {} for r in await self.call(op, read)]

    def _limit_args(self, limits: Sequence[Limit]) -> tuple[list[str], list[int | str]]:
        keys = [self.layout.limit(lim.bucket, lim.window) for lim in limits]
        args: list[int | str] = []
        for lim in limits:
            args += [lim.limit, lim.window * 1000, int(lim.distinct), lim.member]
        return keys, args

    @staticmethod
    def _refusal(limits: Sequence[Limit], values: list[Any]) -> LimitExceeded | None:
        reply = _reply(_LIMITS_REPLY, values)
        if int(reply["allowed"]) == 1:
            return None
        scope = limits[int(reply["index"]) - 1].scope
        return LimitExceeded(scope, max(0.0, float(reply["retry_ms"]) / 1000))

    # ------------------------------------------------------------------ health

    async def ping(self) -> None:
        await self.call("ping", self.redis.ping)

    # ------------------------------------------------------------------ codes

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
        fields = {**_flat(record), "tracked": int(record.tracked), "attempts": 0}
        key = self.layout.otp(user_id, record.purpose)
        if enqueue:
            if self.cluster:
                raise ValueError("a cluster records a code and its tasks on separate slots")
            return await self._put_limited_here(
                key,
                fields,
                record.otp_id,
                record.expires_at,
                limits,
                now,
                unless_suppressed,
                enqueue,
                audit,
            )
        if unless_suppressed and self.cluster:
            # the suppressions are on other slots than the code: read first
            found = await self.suppressions(unless_suppressed)
            hit = next((i for i, s in enumerate(found) if s is not None), None)
            if hit is not None:
                return Suppressed(hit)
            unless_suppressed = ()
        return await self._put_limited(
            key, fields, record.otp_id, record.expires_at, limits, now, unless_suppressed, audit
        )

    async def _put_limited(
        self,
        key: str,
        fields: dict[str, Any],
        member: str,
        expires_at: float,
        limits: Sequence[Limit],
        now: float,
        unless_suppressed: Sequence[str] = (),
        audit: AuditDraft | None = None,
    ) -> LimitExceeded | Suppressed | None:
        """Replace the hash at ``key`` with ``fields`` if every limit allows and none of
        ``unless_suppressed`` is suppressed (not on a cluster: there the caller reads them);
        one trip (on a cluster, one per slot the limits touch: see
        :meth:`_reserve_elsewhere`)."""
        if self.cluster:
            home, away = self._split(key_slot(key.encode()), limits)
            held, refused = await self._reserve_elsewhere(away, member, now)
            if refused is not None:
                return refused
            outcome = await self._put_limited_here(
                key, fields, member, expires_at, home, now, audit=audit
            )
            if outcome is not None:
                await self._release(held, member)
            return outcome
        return await self._put_limited_here(
            key, fields, member, expires_at, limits, now, unless_suppressed, audit=audit
        )

    def _split(
        self, slot: int | None, limits: Sequence[Limit]
    ) -> tuple[list[Limit], dict[int, list[Limit]]]:
        """The limits on ``slot``, and the others grouped by their slot."""
        home: list[Limit] = []
        away: dict[int, list[Limit]] = {}
        for lim in limits:
            s = key_slot(self.layout.limit(lim.bucket, lim.window).encode())
            if s == slot:
                home.append(lim)
            else:
                away.setdefault(s, []).append(lim)
        return home, away

    async def _reserve_elsewhere(
        self, away: dict[int, list[Limit]], member: str, now: float
    ) -> tuple[list[tuple[list[Limit], list[Any]]], LimitExceeded | None]:
        """Count ``member`` on the limits of every other slot, all slots at once. When any
        refuses, give back what the others counted, so that a refused request consumes no
        limit's allowance. (A crash between the two steps can over-count by the requests in
        flight; it never under-counts.)"""
        groups = list(away.values())
        replies = await asyncio.gather(
            *(self._reserve(group, member, now) for group in groups), return_exceptions=True
        )
        held: list[tuple[list[Limit], list[Any]]] = []
        refused: LimitExceeded | None = None
        failure: BaseException | None = None
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, BaseException):
                failure = failure or reply
            elif int(reply[0]) == 1:
                held.append((group, list(reply[1:])))
            else:
                found = self._refusal(group, reply)
                if found is not None and (
                    refused is None or found.retry_after > refused.retry_after
                ):
                    refused = found
        if failure is not None or refused is not None:
            await self._release(held, member)
            if failure is not None:
                raise failure
        return held, refused

    async def _reserve(self, group: list[Limit], member: str, now: float) -> Any:
        keys, args = self._limit_args(group)
        return await self.script("reserve_limits", keys, [_ms(now), member, len(group), *args])

    async def _release(self, held: list[tuple[list[Limit], list[Any]]], member: str) -> None:
        """Give back reservations: drop the hits, restore what a distinct limit knew."""
        if not held:
            return

        async def release(group: list[Limit], before: list[Any]) -> None:
            keys, args = self._limit_args(group)
            await self.script("release_limits", keys, [member, len(group), *args, *before])

        await asyncio.gather(
            *(release(group, before) for group, before in held), return_exceptions=True
        )

    async def _put_limited_here(
        self,
        key: str,
        fields: dict[str, Any],
        member: str,
        expires_at: float,
        limits: Sequence[Limit],
        now: float,
        unless_suppressed: Sequence[str] = (),
        enqueue: Sequence[QueuedTask] = (),
        audit: AuditDraft | None = None,
    ) -> LimitExceeded | Suppressed | None:
        limit_keys, limit_args = self._limit_args(limits)
        flat: list[Any] = [part for item in fields.items() for part in item]
        ttl = max(1, _ms(expires_at - now))
        suppressed = [self.layout.suppression(h) for h in unless_suppressed]
        task_keys: list[str] = []
        task_args: list[Any] = []
        for task in enqueue:
            task_id = task.record.task_id
            task_keys += [
                self.layout.task(task_id),
                self.layout.ready(self.layout.partition(task_id)),
            ]
            pairs = [
                part for item in {**task_fields(task.record), **task.extra}.items() for part in item
            ]
            task_args += [task_id, task.ttl, task.max_backlog, len(pairs), *pairs]
        audit_keys: list[str] = []
        audit_args: list[Any] = [0]
        if audit is not None:
            # the user's stream shares the code's hash tag: one slot, on a cluster too
            stream, record_args = self.audit_args(audit)
            audit_keys.append(stream)
            audit_args = [1, *record_args]
        reply = await self.script(
            "put_limited",
            [key, *limit_keys, *suppressed, *task_keys, *audit_keys],
            [
                _ms(now),
                ttl,
                member,
                len(limits),
                *limit_args,
                len(suppressed),
                len(enqueue),
                *task_args,
                *audit_args,
                *flat,
            ],
        )
        outcome = int(reply[0])
        if outcome == 2:
            return Suppressed(int(reply[1]) - 1)
        if outcome == 3:
            raise UnavailableError("the delivery queue is full")
        return self._refusal(limits, reply)

    def queues_with_codes(self) -> bool:
        return not self.cluster

    async def verify_otp(
        self,
        user_id: str,
        purpose: str,
        code_hash: str,
        now: float,
        audit: AuditDraft | None = None,
    ) -> VerifyOutcome:
        # expires_at is stored in seconds; compare in the same unit
        keys = [self.layout.otp(user_id, purpose)]
        args: list[Any] = [code_hash, now]
        if audit is not None:
            # the user's stream shares the code's hash tag: one slot, on a cluster too
            stream, audit_args = self.audit_args(audit)
            keys.append(stream)
            args += audit_args
        reply = _reply(_VERIFY_REPLY, await self.script("verify_otp", keys, args))
        ids = (
            reply["otp_id"],
            reply["channel"],
            reply.get("range_hash") or "",
            float(reply.get("created_at") or 0),
            reply.get("tracked") == "1",
        )
        if reply["reason"] == "ok":
            return VerifyOutcome(VerifyResult(True), *ids)
        left = max(0, int(reply["attempts_left"]))
        return VerifyOutcome(VerifyResult(False, VerifyReason(reply["reason"]), left), *ids)

    # ------------------------------------------------------------------ link tokens

    async def issue_token(
        self, owner_ref: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        fields = _flat(record)
        key = self.layout.token(owner_ref, record.purpose)
        refused = await self._put_limited(
            key, fields, record.token_id, record.expires_at, limits, now
        )
        assert not isinstance(refused, Suppressed)  # none was named
        return refused

    async def use_token(
        self, owner_ref: str, purpose: str, token_hash: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        # expires_at is stored in seconds; compare in the same unit
        key = self.layout.token(owner_ref, purpose)
        reply = await self.script(
            "use_token", [key], [token_hash, now, purpose, 1 if consume else 0, *TOKEN_FIELDS]
        )
        check = TokenCheck(reply[0])
        if check is not TokenCheck.OK:
            return TokenOutcome(check, user_id=reply[1] if len(reply) > 1 else "")
        values = _reply(TOKEN_FIELDS, reply[1:])
        record = TokenRecord(
            **{
                **values,
                "created_at": float(values["created_at"]),
                "expires_at": float(values["expires_at"]),
            }
        )
        return TokenOutcome(check, record, record.user_id)

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float
    ) -> LimitExceeded | None:
        if not limits:
            return None
        if self.cluster:
            _, away = self._split(None, limits)
            if len(away) > 1:
                _, refused = await self._reserve_elsewhere(away, member, now)
                return refused
        keys, args = self._limit_args(limits)
        reply = await self.script("hit_limits", keys, [_ms(now), member, len(limits), *args])
        return self._refusal(limits, reply)

    async def capped_add(
        self, counter: str, amount: float, cap: float, ttl: int
    ) -> tuple[bool, float]:
        key = self.layout.counter(counter)
        added, total = await self.script("capped_add", [key], [amount, cap, ttl])
        return int(added) == 1, float(total)

    # ------------------------------------------------------------------ tasks

    async def put_task(self, record: TaskRecord, ttl: int) -> None:
        flat = [part for item in task_fields(record).items() for part in item]
        await self.script("task_put", [self.layout.task(record.task_id)], [ttl, *flat])

    async def update_task(self, record: TaskRecord) -> None:
        # a script, so that a record which expired meanwhile is not recreated without a TTL
        flat = [part for item in task_mutable(record).items() for part in item]
        await self.script("task_update", [self.layout.task(record.task_id)], flat)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        key = self.layout.task(task_id)
        raw = cast(dict[str, str], await self.call("get_task", lambda: self.redis.hgetall(key)))
        return parse_task(raw)

    # ------------------------------------------------------------------ suppressions

    async def suppress(self, address_hash: str, record: Suppression, ttl: int) -> None:
        flat = ["display", record.display, "reason", record.reason]
        flat += ["source", record.source, "since", repr(record.since)]
        await self.script("suppress", [self.layout.suppression(address_hash)], [ttl, *flat])

    async def unsuppress(self, address_hash: str) -> bool:
        key = self.layout.suppression(address_hash)
        return int(await self.script("unsuppress", [key], [])) == 1

    async def suppressions(self, address_hashes: Sequence[str]) -> list[Suppression | None]:
        if not address_hashes:
            return []
        keys = [self.layout.suppression(h) for h in address_hashes]

        async def read() -> list[Any]:
            # one pipeline: one round trip, split by node in a cluster
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)  # type: ignore[unused-awaitable]  # queued, not sent
                return list(await pipe.execute())

        replies = await self.call("suppressions", read)
        return [parse_suppression(raw) for raw in replies]

    # ------------------------------------------------------------------ SMS conversion

    def _conversion_keys(self, range_hash: str) -> list[str]:
        layout = self.layout
        return [layout.sms_samples(range_hash), layout.sms_block(range_hash), layout.sms_blocks()]

    async def sms_sent(
        self, range_hash: str, sealed_prefix: str, rule: ConversionRule, now: float
    ) -> SmsBlock | None:
        args = [
            repr(now),
            repr(now + rule.block_seconds),
            rule.window,
            rule.bucket,
            rule.min_samples,
            repr(rule.min_conversion),
            range_hash,
            sealed_prefix,
        ]
        reply = await self.script("sms_sent", self._conversion_keys(range_hash), args)
        if not reply:
            return None
        fresh, reason, blocked_at, expires_at, sent, verified, sealed = reply
        return SmsBlock(
            range_hash=range_hash,
            sealed_prefix=str(sealed),
            reason=str(reason),
            blocked_at=float(blocked_at),
            expires_at=float(expires_at),
            sent=int(sent),
            verified=int(verified),
            fresh=int(fresh) == 1,
        )

    async def sms_unsent(self, range_hash: str, rule: ConversionRule, now: float) -> None:
        field = f"s:{math.floor(now / rule.bucket)}"
        await self.script("sms_credit", [self.layout.sms_samples(range_hash)], [field, -1])

    async def sms_verified(
        self, range_hash: str, issued_at: float, rule: ConversionRule, now: float
    ) -> None:
        at = math.floor(issued_at / rule.bucket)
        if at <= math.floor(now / rule.bucket) - math.ceil(rule.window / rule.bucket):
            return  # issued before the window: its sent sample is gone too
        await self.script("sms_credit", [self.layout.sms_samples(range_hash)], [f"v:{at}", 1])

    async def sms_blocks(self, now: float) -> list[SmsBlock]:
        index = self.layout.sms_blocks()

        async def ranges() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(index, "-inf", repr(now))  # type: ignore[unused-awaitable]
                pipe.zrange(index, 0, _BLOCKS_MAX - 1)  # type: ignore[unused-awaitable]
                return list(await pipe.execute())

        _, hashes = await self.call("sms_blocks", ranges)
        if not hashes:
            return []

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for range_hash in hashes:
                    key = self.layout.sms_block(range_hash)
                    pipe.hmget(key, _BLOCK_FIELDS)  # type: ignore[unused-awaitable]
                return list(await pipe.execute())

        found: list[SmsBlock] = []
        for range_hash, values in zip(hashes, await self.call("sms_blocks", read), strict=True):
            raw = _reply(_BLOCK_FIELDS, values)
            if raw["reason"] is None or float(raw["expires_at"]) <= now:
                continue
            found.append(
                SmsBlock(
                    range_hash=str(range_hash),
                    sealed_prefix=raw["prefix"] or "",
                    reason=raw["reason"],
                    blocked_at=float(raw["blocked_at"]),
                    expires_at=float(raw["expires_at"]),
                    sent=int(raw["sent"]),
                    verified=int(raw["verified"]),
                )
            )
        return found

    async def sms_unblock(self, range_hash: str, now: float) -> bool:
        keys = [
            self.layout.sms_block(range_hash),
            self.layout.sms_samples(range_hash),
            self.layout.sms_blocks(),
        ]
        return int(await self.script("sms_unblock", keys, [repr(now), range_hash])) == 1

    # ------------------------------------------------------------------ provider reports

    async def link_message(self, ref: str, task_id: str, ttl: int) -> list[str]:
        parked = await self.script("message_link", [self.layout.message(ref)], [task_id, ttl])
        return [str(p) for p in parked]

    async def message_task(self, ref: str, event_ref: str, parked: str, ttl: int) -> str | None:
        task = await self.script(
            "message_task", [self.layout.message(ref)], [event_ref, parked, ttl, PARKED_MAX]
        )
        return str(task) if task else None

    async def report_task(self, task_id: str, report: TaskReport) -> ReportOutcome:
        delivered = 1 if report.status is TaskStatus.DELIVERED else 0
        outcome = await self.script(
            "task_report",
            [self.layout.task(task_id)],
            [
                report.message_id,
                report.event_ref,
                report.status.value,
                report.reason,
                repr(report.at),
                delivered,
                *report.status.replaced_by(),
            ],
        )
        return ReportOutcome(str(outcome))

    # ------------------------------------------------------------------ OTP trails

    async def put_trail(self, trail: OtpTrail, sealed_fallback: str, ttl: int) -> None:
        fields = {
            "created_at": repr(trail.created_at),
            "expires_at": repr(trail.expires_at),
            "fallback_channel": trail.fallback_channel,
            "fallback_until": repr(trail.fallback_until),
            "first_task": trail.deliveries[0].task_id if trail.deliveries else "",
            "deliveries": dump_deliveries(trail.deliveries),
            "verified_at": repr(trail.verified_at),
            "fell_back_at": repr(trail.fell_back_at),
            "sealed": sealed_fallback,
        }
        flat = [part for item in fields.items() for part in item]
        # the task record's script: a hash replaced whole, with its TTL
        await self.script("task_put", [self.layout.trail(trail.otp_id)], [ttl, *flat])

    async def get_trail(self, otp_id: str) -> OtpTrail | None:
        key = self.layout.trail(otp_id)
        raw = cast(dict[str, str], await self.call("get_trail", lambda: self.redis.hgetall(key)))
        return _parse_trail(otp_id, raw)

    async def take_fallback(
        self, otp_id: str, failed_task_id: str, delivery: TrailDelivery, now: float
    ) -> str | None:
        args = [failed_task_id, repr(now), delivery.channel, delivery.task_id]
        sealed = await self.script("trail_take", [self.layout.trail(otp_id)], args)
        return str(sealed) if sealed else None

    async def trail_verified(self, otp_id: str, now: float) -> None:
        await self.script("trail_verified", [self.layout.trail(otp_id)], [repr(now)])

    # ------------------------------------------------------------------ claims

    async def claim(self, scope: str, ref: str, fingerprint: str, ttl: int) -> Claim:
        key = self.layout.remembered(scope, ref)
        pending = Claim.pending(fingerprint)
        # one command: set if absent, and the value that was there if not
        if self._acks:
            try:
                (existing,) = await self.call(
                    "claim",
                    lambda: self._pipeline(
                        lambda pipe: pipe.set(key, pending, nx=True, ex=ttl, get=True)
                    ),
                )
            except UnavailableError as exc:
                if isinstance(exc.__cause__, UnreplicatedWrite):
                    # the caller is told 503 and retries: it must not find its own claim
                    # pending (409) until the lease ends
                    script = self._scripts["settle_claim"]
                    with contextlib.suppress(Exception):
                        await script(keys=[key], args=[pending, "", 0])
                raise
        else:
            existing = await self.call(
                "claim", lambda: self.redis.set(key, pending, nx=True, ex=ttl, get=True)
            )
        return Claim.stored(cast(str | None, existing))

    async def settle(self, scope: str, ref: str, fingerprint: str, value: str, ttl: int) -> None:
        if not value:
            raise ValueError("a settled claim keeps a non-empty value")
        key = self.layout.remembered(scope, ref)
        args = [Claim.pending(fingerprint), Claim.settled(fingerprint, value), ttl]
        await self.script("settle_claim", [key], args)

    async def release(self, scope: str, ref: str, fingerprint: str) -> None:
        key = self.layout.remembered(scope, ref)
        await self.script("settle_claim", [key], [Claim.pending(fingerprint), "", 0])

    # ------------------------------------------------------------------ audit

    async def append_audit(
        self, record: dict[str, str], user_id: str | None, retention_ms: int, now: float
    ) -> str:
        key, args = self._audit_args(record, user_id, retention_ms, now)
        (added,) = await self.script("audit_append", [key], args)
        return str(added)

    async def append_audits(self, entries: Sequence[AuditEntry], retention_ms: int) -> list[str]:
        if not entries:
            return []
        calls = [self._audit_args(record, user, retention_ms, now) for record, user, now in entries]
        if self.cluster:
            # the streams are on any slot: one call per record, at once
            replies = await asyncio.gather(
                *(self.script("audit_append", [key], args) for key, args in calls)
            )
            return [str(r[0]) for r in replies]
        # one script call for the batch: one command to pack and answer, not one a record
        keys = [key for key, _ in calls]
        args = [arg for _, record_args in calls for arg in record_args]
        return [str(r) for r in await self.script("audit_append", keys, args)]

    def audit_args(self, audit: AuditDraft) -> tuple[str, list[Any]]:
        """The stream of ``audit`` and the arguments a script's ``audit_add_argv`` takes
        (see audit_append.lua), for a script that keeps the record with its own work."""
        return self._audit_args(audit.record, audit.user_id, audit.retention_ms, audit.now)

    def _audit_args(
        self, record: dict[str, str], user_id: str | None, retention_ms: int, now: float
    ) -> tuple[str, list[Any]]:
        now_ms = max(0, _ms(now))
        trim: list[Any]
        if user_id is None:
            # the events of no user (a refused API key) could be sent in any number: capped
            key, trim = self.layout.audit_global(), ["MAXLEN", AUDIT_GLOBAL_CAP, "~"]
        else:
            # exact: a user's stream is small, and what outlived the retention must go
            key = self.layout.audit_user(user_id)
            trim = ["MINID", max(0, now_ms - retention_ms), "="]
        # the fields as arguments of their own (hiredis packs them in C; Lua takes them as
        # they are, where one JSON argument had to be encoded here and decoded there)
        flat = [part for item in record.items() for part in item]
        return key, [now_ms, *trim, max(1, retention_ms), len(flat), *flat]

    async def audit_events(
        self,
        user_id: str | None,
        event: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        cursor: str | None,
    ) -> AuditPage:
        key = self.layout.audit_global() if user_id is None else self.layout.audit_user(user_id)
        lo, hi = audit_bounds(since, until)
        end = str(hi)
        if cursor is not None:
            below = parse_audit_id(cursor)
            if below is None:
                raise ValueError("not an audit cursor")
            if below == (0, 0):
                return [], None
            if below[0] <= hi:
                end = f"({cursor}"
        if lo > hi:
            return [], None
        count = limit + 1 if event is None else _AUDIT_BATCH
        found: list[dict[str, str]] = []
        scanned = 0

        async def read(end: str) -> list[tuple[str, dict[str, str]]]:
            reply = await self.call(
                "audit_events", lambda: self.redis.xrevrange(key, end, str(lo), count)
            )
            return cast(list[tuple[str, dict[str, str]]], reply)

        while True:
            batch = await read(end)
            for entry_id, fields in batch:
                if event is None or fields.get("event") == event:
                    found.append({"id": entry_id, **fields})
                    if len(found) > limit:
                        return found[:limit], found[limit - 1]["id"]
            scanned += len(batch)
            if len(batch) < count:
                return found, None
            if scanned >= _AUDIT_SCAN_MAX:
                # enough read for one call: the next page goes on below the last entry read
                return found, batch[-1][0]
            end = f"({batch[-1][0]}"

    # ------------------------------------------------------------------ TOTP

    async def totp_begin(
        self, user_id: str, record: TotpRecord, expires_at: float, now: float
    ) -> bool:
        keys = [self.layout.totp(user_id), self.layout.totp_pending(user_id)]
        fields = {**_flat(record), "expires_at": expires_at}
        flat = [part for item in fields.items() for part in item]
        ttl = max(1, _ms(expires_at - now))
        return int(await self.script("totp_begin", keys, [ttl, *flat])) == 1

    async def totp_get(self, user_id: str, *, pending: bool, now: float) -> TotpRecord | None:
        key = self.layout.totp_pending(user_id) if pending else self.layout.totp(user_id)
        names = [*TOTP_FIELDS, "expires_at"]
        raw = await self.call("totp_get", lambda: self.redis.hmget(key, names))
        values = _reply(tuple(names), cast(list[str | None], raw))
        if values["sealed_secret"] is None:
            return None
        # a pending enrolment ends at its expires_at by the caller's clock (as codes do)
        if values["expires_at"] is not None and now >= float(values["expires_at"]):
            return None
        return TotpRecord(
            sealed_secret=values["sealed_secret"],
            algorithm=values["algorithm"],
            digits=int(values["digits"]),
            period=int(values["period"]),
            last_step=int(values["last_step"]),
        )

    @staticmethod
    def _totp_outcome(reply: Sequence[Any]) -> TotpOutcome:
        check = TotpCheck(reply[0])
        if check is TotpCheck.LOCKED:
            return TotpOutcome(check, retry_after=max(0.0, float(reply[1]) / 1000))
        if check is TotpCheck.OK and len(reply) > 1:
            return TotpOutcome(check, remaining=int(reply[1]))
        return TotpOutcome(check)

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
        enabled = self.layout.totp(user_id)
        checked = enabled if confirm is None else self.layout.totp_pending(user_id)
        limit_keys, limit_args = self._limit_args([lockout])
        args = [
            _ms(now),
            member,
            sealed_secret,
            *limit_args,
            0 if confirm is None else 1,
            len(steps),
            *steps,
            *(confirm or ()),
        ]
        reply = await self.script("totp_check", [checked, *limit_keys, enabled], args)
        return self._totp_outcome(reply)

    async def totp_use_recovery(
        self, user_id: str, code_hash: str, lockout: Limit, member: str, now: float
    ) -> TotpOutcome:
        limit_keys, limit_args = self._limit_args([lockout])
        args = [_ms(now), member, code_hash, *limit_args]
        reply = await self.script("totp_recovery", [self.layout.totp(user_id), *limit_keys], args)
        return self._totp_outcome(reply)

    async def totp_set_recovery(self, user_id: str, code_hashes: Sequence[str]) -> bool:
        key = self.layout.totp(user_id)
        return int(await self.script("totp_set_recovery", [key], [" ".join(code_hashes)])) == 1

    async def totp_delete(self, user_id: str) -> bool:
        keys = [self.layout.totp(user_id), self.layout.totp_pending(user_id)]
        return int(await self.script("totp_delete", keys, [])) == 1
