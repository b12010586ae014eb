"""The durable delivery queue's Redis side: partitioned streams, one consumer group.

Each partition ``n`` has a ready stream, a delayed set (retries, scored by when they are
due) and a dead-letter stream, all under the hash tag ``{q:n}`` that the task records of
that partition share, so every change below is one script on one slot. An entry only
names its task; the task record holds the sealed message. Acknowledged entries are
deleted at once, so a ready stream holds exactly the backlog and is never trimmed: no
pending entry can be cut. Dead-letter streams are trimmed by age (``MINID``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import ResponseError

from otpd.errors import UnavailableError
from otpd.models import DeadLetter, TaskRecord
from otpd.store.base import AuditDraft, Suppression
from otpd.store.redis.store import RedisStore, parse_suppression, task_fields

__all__ = ["GROUP", "StreamEntry", "TaskStreams"]

GROUP = "otpd"


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One ready-stream entry handed to this consumer, with its task record as stored
    (empty when the record is gone)."""

    partition: int
    entry_id: str
    task_id: str
    record: Mapping[str, str]


class TaskStreams:
    """Atomic queue operations over the partitions of one :class:`RedisStore`."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.layout = store.layout
        self.partitions = tuple(range(store.layout.partitions))

    async def create_groups(self) -> None:
        """Create the consumer group on every partition (idempotent)."""

        async def create() -> None:
            for p in self.partitions:
                try:
                    await self.store.redis.xgroup_create(
                        self.layout.ready(p), GROUP, id="0", mkstream=True
                    )
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

        await self.store.call("create_groups", create)

    async def enqueue(
        self, record: TaskRecord, extra: Mapping[str, str], ttl: int, max_backlog: int
    ) -> str | None:
        """Write the record (with ``extra`` fields: the sealed body) and its entry; the
        entry id, or None when the partition's backlog is full."""
        p = self.layout.partition(record.task_id)
        fields = {**task_fields(record), **extra}
        flat = [part for item in fields.items() for part in item]
        reply = await self.store.script(
            "task_enqueue",
            [self.layout.task(record.task_id), self.layout.ready(p)],
            [record.task_id, ttl, max_backlog, *flat],
        )
        return cast(str | None, reply)

    async def start(
        self,
        consumer: str,
        task_id: str,
        entry_id: str,
        fields: Mapping[str, Any],
        unless_suppressed: str | None = None,
    ) -> bool | Suppression:
        """Record an attempt if ``consumer`` still holds the entry (and keep holding it);
        not when the recipient is suppressed under the keyed hash ``unless_suppressed``
        (not on a cluster: its entry is on another slot): its suppression then."""
        p = self.layout.partition(task_id)
        flat = [part for item in fields.items() for part in item]
        keys = [self.layout.task(task_id), self.layout.ready(p)]
        if unless_suppressed is not None:
            if self.store.cluster:
                raise ValueError("a cluster keeps the suppression list on other slots")
            keys.append(self.layout.suppression(unless_suppressed))
        reply = await self.store.script("task_start", keys, [GROUP, consumer, entry_id, *flat])
        if isinstance(reply, list):
            found = parse_suppression(dict(zip(reply[::2], reply[1::2], strict=True)))
            if found is not None:
                return found
            raise UnavailableError("the store answered the attempt's start out of shape")
        return bool(reply)

    async def update(self, task_id: str, fields: Mapping[str, Any]) -> bool:
        flat = [part for item in fields.items() for part in item]
        return bool(await self.store.script("task_update", [self.layout.task(task_id)], flat))

    async def read(
        self,
        consumer: str,
        partitions: Sequence[int],
        count: int,
        block_ms: int,
        *,
        pending: bool = False,
    ) -> list[StreamEntry]:
        """New entries for ``consumer`` (up to ``count`` per partition), waiting up to
        ``block_ms`` for one; each with its record. With ``pending``, the entries already
        delivered to ``consumer`` and not acknowledged instead (its own history, at once):
        a read whose reply was lost with its connection left some there."""
        since = "0" if pending else ">"
        streams: dict[Any, Any] = {self.layout.ready(p): since for p in partitions}
        by_key = {self.layout.ready(p): p for p in partitions}

        async def read() -> Any:
            return await self.store.redis.xreadgroup(
                GROUP, consumer, streams, count=count, block=None if pending else block_ms
            )

        reply = await self.store.call("read_queue", read) or []
        if reply:
            # The entry's XADD answered the request that wrote it in the same instant:
            # let that request's answer go out before this delivery's work starts, so a
            # request that queues a message is not slower to answer than one that does
            # not (the reset flow's enumeration defence times exactly that).
            await asyncio.sleep(0)
        found = [
            (by_key[key], entry_id, fields.get("t", ""))
            for key, entries in reply
            for entry_id, fields in entries
            if fields is not None
        ]
        return await self._with_records(found)

    async def claim(
        self, consumer: str, partition: int, min_idle_ms: int, count: int
    ) -> list[StreamEntry]:
        """Entries pending longer than ``min_idle_ms`` with any consumer, now ours."""
        key = self.layout.ready(partition)

        async def claim() -> Any:
            return await self.store.redis.xautoclaim(
                key, GROUP, consumer, min_idle_ms, "0-0", count=count
            )

        reply = await self.store.call("claim_queue", claim)
        found = [
            (partition, entry_id, fields.get("t", ""))
            for entry_id, fields in reply[1]
            if fields is not None
        ]
        return await self._with_records(found)

    async def _with_records(self, found: list[tuple[int, str, str]]) -> list[StreamEntry]:
        if not found:
            return []
        keys = [self.layout.task(task_id) for _, _, task_id in found]
        raw = await self.store.hashes("read_tasks", keys)
        return [
            StreamEntry(p, entry_id, task_id, rec)
            for (p, entry_id, task_id), rec in zip(found, raw, strict=True)
        ]

    async def ack(self, partition: int, entry_id: str) -> None:
        await self.store.script("task_ack", [self.layout.ready(partition)], [GROUP, entry_id])

    async def finish(
        self,
        task_id: str,
        entry_id: str,
        fields: Mapping[str, Any],
        dead_letter: Mapping[str, Any] | None,
        *,
        dead_ttl: int,
        now_ms: int,
        audit: AuditDraft | None = None,
    ) -> bool:
        """Write the final status and acknowledge the entry together; a dead letter is
        recorded when given, and ``audit`` kept in the same step (not on a cluster: the
        audit streams are on other slots). False when the record was gone."""
        p = self.layout.partition(task_id)
        flat = [part for item in fields.items() for part in item]
        letter = [part for item in (dead_letter or {}).items() for part in item]
        min_id = max(0, now_ms - dead_ttl * 1000)
        keys = [self.layout.task(task_id), self.layout.ready(p), self.layout.dead(p)]
        audit_args: list[Any] = []
        if audit is not None:
            if self.store.cluster:
                raise ValueError("a cluster keeps the audit streams on other slots")
            stream, audit_args = self.store.audit_args(audit)
            keys.append(stream)
        reply = await self.store.script(
            "task_finish",
            keys,
            [
                GROUP,
                entry_id,
                1 if dead_letter is not None else 0,
                dead_ttl,
                f"{min_id}-0",
                len(fields),
                *audit_args,
                *flat,
                *letter,
            ],
        )
        return bool(reply)

    async def retry(
        self, task_id: str, entry_id: str, due_ms: int, fields: Mapping[str, Any]
    ) -> bool:
        """Write the record, acknowledge the entry and park the task until ``due_ms``."""
        p = self.layout.partition(task_id)
        flat = [part for item in fields.items() for part in item]
        reply = await self.store.script(
            "task_retry",
            [self.layout.task(task_id), self.layout.ready(p), self.layout.delayed(p)],
            [GROUP, entry_id, task_id, due_ms, *flat],
        )
        return bool(reply)

    async def promote(self, partition: int, now_ms: int, at_most: int) -> int:
        """Move due retries of ``partition`` back to its ready stream; how many moved."""
        keys = [self.layout.ready(partition), self.layout.delayed(partition)]
        return int(await self.store.script("task_promote", keys, [now_ms, at_most]))

    async def replay(self, task_id: str, ttl: int, now: float) -> bool:
        p = self.layout.partition(task_id)
        keys = [self.layout.task(task_id), self.layout.ready(p), self.layout.dead(p)]
        return bool(await self.store.script("task_replay", keys, [task_id, ttl, now]))

    async def dead_letters(self, limit: int, since: float) -> list[DeadLetter]:
        """The newest dead letters of every partition, newest first, failed after
        ``since``."""

        async def newest() -> list[Any]:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for p in self.partitions:
                    _ = pipe.xrevrange(self.layout.dead(p), count=limit)
                return await pipe.execute()

        letters: list[DeadLetter] = []
        for entries in await self.store.call("dead_letters", newest):
            for _, fields in entries:
                try:
                    letter = DeadLetter(
                        task_id=fields["task_id"],
                        channel=fields["channel"],
                        recipient=fields.get("recipient", ""),
                        last_error=fields.get("last_error", ""),
                        attempts=int(fields.get("attempts", 0)),
                        failed_at=float(fields["failed_at"]),
                    )
                except (KeyError, ValueError):
                    continue
                if letter.failed_at >= since:
                    letters.append(letter)
        letters.sort(key=lambda d: d.failed_at, reverse=True)
        return letters

    async def backlog(self) -> int:
        """Entries ready or pending plus retries waiting, over every partition."""

        async def count() -> list[Any]:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for p in self.partitions:
                    _ = pipe.xlen(self.layout.ready(p))
                    _ = pipe.zcard(self.layout.delayed(p))
                return await pipe.execute()

        return sum(int(n) for n in await self.store.call("backlog", count))

    async def oldest_age(self) -> float:
        """Seconds since the oldest entry of any ready stream (ready or pending) was added,
        by the Redis clock that stamped it; 0 when every stream is empty."""

        async def first() -> tuple[list[Any], Any]:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for p in self.partitions:
                    _ = pipe.xrange(self.layout.ready(p), count=1)
                heads = await pipe.execute()
            return heads, await self.store.redis.time()

        heads, now = await self.store.call("oldest_age", first)
        stamps = [int(str(entries[0][0]).split("-")[0]) for entries in heads if entries]
        if not stamps:
            return 0.0
        if isinstance(now, dict):  # a cluster answers per node: any node's clock will do
            now = next(iter(now.values()))
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        return max(0.0, (now_ms - min(stamps)) / 1000)
