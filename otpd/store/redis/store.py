"""The Redis store: one Lua script per operation, one round trip each."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from otpd.config import StoreConfig
from otpd.errors import UnavailableError
from otpd.metrics import Metrics
from otpd.models import Channel, TaskRecord, TaskStatus, VerifyReason, VerifyResult
from otpd.store.base import (
    TOKEN_FIELDS,
    Limit,
    LimitExceeded,
    OtpRecord,
    TokenCheck,
    TokenOutcome,
    TokenRecord,
    VerifyOutcome,
)
from otpd.store.keys import KeyLayout
from otpd.store.redis.errors import StoreHealth, error_kind

__all__ = ["RedisStore", "load_script"]

T = TypeVar("T")

_SCRIPTS = ("put_limited", "verify_otp", "hit_limits", "capped_add", "use_token")

# The fields of multi-value script replies, named once here (the scripts say the same).
_LIMITS_REPLY = ("allowed", "index", "retry_ms")  # limits.lua, put_limited, hit_limits
_VERIFY_REPLY = ("reason", "attempts_left", "otp_id", "channel")  # verify_otp.lua


def _reply(names: tuple[str, ...], values: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(names, values, strict=False))


def load_script(name: str) -> str:
    """The source of a Lua script with the shared limits prelude in front of it."""
    lua = resources.files("otpd.store.redis") / "lua"
    return (lua / "limits.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RedisStore:
    """The production store. Open with ``async with RedisStore(config) as store``."""

    def __init__(self, config: StoreConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.layout = KeyLayout(config.key_prefix)  # public for tools and tests
        self._health = StoreHealth(metrics or Metrics())
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    async def __aenter__(self) -> Self:
        if self._redis is not None:
            raise RuntimeError("RedisStore is already open")
        pool = aioredis.BlockingConnectionPool.from_url(
            self.config.redis_url,
            max_connections=self.config.max_connections,
            timeout=self.config.pool_timeout_seconds,
            socket_timeout=self.config.socket_timeout_seconds,
            socket_connect_timeout=self.config.socket_timeout_seconds,
            decode_responses=True,
        )
        self._redis = aioredis.Redis(connection_pool=pool)

        async def load() -> None:
            assert self._redis is not None
            await self._redis.ping()
            for name in _SCRIPTS:
                script = self._redis.register_script(load_script(name))
                # Loaded once here so every later call is a single EVALSHA.
                await self._redis.script_load(script.script)
                self._scripts[name] = script

        try:
            await self._call("open", load)
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

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose(close_connection_pool=True)

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise UnavailableError("the store is not open")
        return self._redis

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one store operation; every redis-py failure becomes UnavailableError."""
        try:
            result = await fn()
        except Exception as exc:
            kind = error_kind(exc)
            if kind is None:
                raise
            self._health.failed(op, kind, exc)
            raise UnavailableError("the store is unavailable") from exc
        self._health.answered()
        return result

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts[name]
        return await self._call(name, lambda: script(keys=list(keys), args=list(args)))

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
        await self._call("ping", self.redis.ping)

    # ------------------------------------------------------------------ codes

    async def issue_otp(
        self, user_id: str, record: OtpRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        fields = {**dataclasses.asdict(record), "attempts": 0}
        key = self.layout.otp(user_id, record.purpose)
        return await self._put_limited(key, fields, record.otp_id, record.expires_at, limits, now)

    async def _put_limited(
        self,
        key: str,
        fields: dict[str, Any],
        member: str,
        expires_at: float,
        limits: Sequence[Limit],
        now: float,
    ) -> LimitExceeded | None:
        """Replace the hash at ``key`` with ``fields`` if every limit allows; one trip."""
        limit_keys, limit_args = self._limit_args(limits)
        flat: list[Any] = [part for item in fields.items() for part in item]
        ttl = max(1, _ms(expires_at - now))
        reply = await self._script(
            "put_limited",
            [key, *limit_keys],
            [_ms(now), ttl, member, len(limits), *limit_args, *flat],
        )
        return self._refusal(limits, reply)

    async def verify_otp(
        self, user_id: str, purpose: str, code_hash: str, now: float
    ) -> VerifyOutcome:
        # expires_at is stored in seconds; compare in the same unit
        key = self.layout.otp(user_id, purpose)
        reply = _reply(_VERIFY_REPLY, await self._script("verify_otp", [key], [code_hash, now]))
        ids = (reply["otp_id"], reply["channel"])
        if reply["reason"] == "ok":
            return VerifyOutcome(VerifyResult(True), *ids)
        left = max(0, int(reply["attempts_left"]))
        return VerifyOutcome(VerifyResult(False, VerifyReason(reply["reason"]), left), *ids)

    # ------------------------------------------------------------------ link tokens

    async def issue_token(
        self, owner_ref: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        fields = dataclasses.asdict(record)
        key = self.layout.token(owner_ref, record.purpose)
        return await self._put_limited(key, fields, record.token_id, record.expires_at, limits, now)

    async def use_token(
        self, owner_ref: str, purpose: str, token_hash: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        # expires_at is stored in seconds; compare in the same unit
        key = self.layout.token(owner_ref, purpose)
        reply = await self._script(
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
        keys, args = self._limit_args(limits)
        reply = await self._script("hit_limits", keys, [_ms(now), member, len(limits), *args])
        return self._refusal(limits, reply)

    async def capped_add(
        self, counter: str, amount: float, cap: float, ttl: int
    ) -> tuple[bool, float]:
        key = self.layout.counter(counter)
        added, total = await self._script("capped_add", [key], [amount, cap, ttl])
        return int(added) == 1, float(total)

    # ------------------------------------------------------------------ tasks

    async def put_task(self, record: TaskRecord, ttl: int) -> None:
        key = self.layout.task(record.task_id)
        mapping: dict[Any, Any] = {
            "task_id": record.task_id,
            "channel": record.channel.value,
            "tag": record.tag,
            "created_at": record.created_at,
            **self._task_mutable(record),
        }

        async def put() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                # pipeline commands only queue; execute() sends them in one round trip
                _ = pipe.hset(key, mapping=mapping)
                _ = pipe.expire(key, ttl)
                await pipe.execute()

        await self._call("put_task", put)

    async def update_task(self, record: TaskRecord) -> None:
        key = self.layout.task(record.task_id)
        mapping = self._task_mutable(record)
        await self._call("update_task", lambda: self.redis.hset(key, mapping=mapping))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        key = self.layout.task(task_id)
        raw = cast(dict[str, str], await self._call("get_task", lambda: self.redis.hgetall(key)))
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
        )

    @staticmethod
    def _task_mutable(record: TaskRecord) -> dict[Any, Any]:
        return {
            "status": record.status.value,
            "attempts": record.attempts,
            "provider": record.provider,
            "last_error": record.last_error,
            "updated_at": record.updated_at,
        }

    # ------------------------------------------------------------------ idempotency

    async def remember(self, scope: str, ref: str, value: str, ttl: int) -> str | None:
        key = self.layout.remembered(scope, ref)
        existing = await self._call(
            "remember", lambda: self.redis.set(key, value, nx=True, ex=ttl, get=True)
        )
        return cast(str | None, existing)
