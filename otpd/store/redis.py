"""Redis backend: one Lua script per operation, one round trip each."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript

from otpd.config import StoreConfig
from otpd.errors import UnavailableError
from otpd.models import Channel, TaskRecord, TaskStatus, VerifyReason, VerifyResult
from otpd.store.base import (
    Limit,
    LimitExceeded,
    OtpRecord,
    TokenCheck,
    TokenOutcome,
    TokenRecord,
    VerifyOutcome,
)
from otpd.store.keys import Keys

__all__ = ["RedisStore", "load_script"]

T = TypeVar("T")


def load_script(name: str) -> str:
    """The source of a Lua script with the shared limits prelude in front of it."""
    lua = resources.files("otpd.store") / "lua"
    return (lua / "limits.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _limit_args(limits: Sequence[Limit]) -> tuple[list[str], list[int | str]]:
    keys = [lim.key for lim in limits]
    args: list[int | str] = []
    for lim in limits:
        args += [lim.limit, lim.window * 1000, int(lim.distinct), lim.member]
    return keys, args


def _refusal(limits: Sequence[Limit], reply: list[Any]) -> LimitExceeded | None:
    if int(reply[0]) == 1:
        return None
    return LimitExceeded(limits[int(reply[1]) - 1].scope, max(0.0, float(reply[2]) / 1000))


class RedisStore:
    """The production store. Open with ``async with RedisStore(config) as store``."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix)
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
        try:
            async with self._guard():
                await self._redis.ping()
                for name in ("put_limited", "verify_otp", "hit_limits", "capped_add", "use_token"):
                    script = self._redis.register_script(load_script(name))
                    # Loaded once here so every later call is a single EVALSHA.
                    await self._redis.script_load(script.script)
                    self._scripts[name] = script
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

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Map Redis connection trouble to one otpd error at the boundary."""
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise UnavailableError("the store is unavailable") from exc

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with self._guard():
            return await fn()

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts[name]
        return await self._call(lambda: script(keys=list(keys), args=list(args)))

    # ------------------------------------------------------------------ health

    async def ping(self) -> None:
        await self._call(self.redis.ping)

    # ------------------------------------------------------------------ codes

    async def issue_otp(
        self, key: str, record: OtpRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        fields = {**dataclasses.asdict(record), "attempts": 0}
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
        limit_keys, limit_args = _limit_args(limits)
        flat: list[Any] = [part for item in fields.items() for part in item]
        ttl = max(1, _ms(expires_at - now))
        reply = await self._script(
            "put_limited",
            [key, *limit_keys],
            [_ms(now), ttl, member, len(limits), *limit_args, *flat],
        )
        return _refusal(limits, reply)

    async def verify_otp(self, key: str, code_hash: str, now: float) -> VerifyOutcome:
        # expires_at is stored in seconds; compare in the same unit
        reason, left, otp_id, channel = await self._script("verify_otp", [key], [code_hash, now])
        if reason == "ok":
            return VerifyOutcome(VerifyResult(True), otp_id, channel)
        result = VerifyResult(False, VerifyReason(reason), max(0, int(left)))
        return VerifyOutcome(result, otp_id, channel)

    # ------------------------------------------------------------------ link tokens

    async def issue_token(
        self, key: str, record: TokenRecord, limits: Sequence[Limit], now: float
    ) -> LimitExceeded | None:
        fields = dataclasses.asdict(record)
        return await self._put_limited(key, fields, record.token_id, record.expires_at, limits, now)

    async def use_token(
        self, key: str, token_hash: str, purpose: str, now: float, *, consume: bool
    ) -> TokenOutcome:
        # expires_at is stored in seconds; compare in the same unit
        reply = await self._script(
            "use_token", [key], [token_hash, now, purpose, 1 if consume else 0]
        )
        check = TokenCheck(reply[0])
        if check is not TokenCheck.OK:
            return TokenOutcome(check, user_id=reply[1] if len(reply) > 1 else "")
        token_id, token_hash_, purpose_, user_id, email, created, expires, ip, agent = reply[1:]
        record = TokenRecord(
            token_id=token_id,
            token_hash=token_hash_,
            purpose=purpose_,
            user_id=user_id,
            email=email,
            created_at=float(created),
            expires_at=float(expires),
            client_ip=ip,
            user_agent=agent,
        )
        return TokenOutcome(check, record, user_id)

    async def hit_limits(
        self, limits: Sequence[Limit], member: str, now: float, *, consume: bool = True
    ) -> LimitExceeded | None:
        if not limits:
            return None
        keys, args = _limit_args(limits)
        reply = await self._script(
            "hit_limits", keys, [_ms(now), member, 1 if consume else 0, len(limits), *args]
        )
        return _refusal(limits, reply)

    async def capped_add(self, key: str, amount: float, cap: float, ttl: int) -> tuple[bool, float]:
        added, total = await self._script("capped_add", [key], [amount, cap, ttl])
        return int(added) == 1, float(total)

    # ------------------------------------------------------------------ tasks

    async def put_task(self, record: TaskRecord, ttl: int) -> None:
        key = self._task_key(record.task_id)
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

        await self._call(put)

    async def update_task(self, record: TaskRecord) -> None:
        key = self._task_key(record.task_id)
        await self._call(lambda: self.redis.hset(key, mapping=self._task_mutable(record)))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        key = self._task_key(task_id)
        raw = cast(dict[str, str], await self._call(lambda: self.redis.hgetall(key)))
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

    def _task_key(self, task_id: str) -> str:
        return self.keys.task(task_id)

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

    async def remember(self, key: str, value: str, ttl: int) -> str | None:
        existing = await self._call(lambda: self.redis.set(key, value, nx=True, ex=ttl, get=True))
        return cast(str | None, existing)
