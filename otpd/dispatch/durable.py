"""The durable delivery queue: Redis Streams read by every otpd instance as one group.

A task is accepted once its record (holding the message sealed with AES-GCM) and its
stream entry are written in one script. Each daemon reads new entries as the consumer
``instance``, claims entries another consumer left pending longer than
``dispatch.claim_idle_seconds`` (a crashed daemon's work, or its own before a restart), and
moves due retries from the delayed set back to the stream. A final status is written
atomically with the entry's acknowledgement, so a reclaimed entry whose record is already
final is only acknowledged: a message is sent twice only when a daemon died during its
provider call.

With ``store.fallback = "memory"`` the queue keeps accepting while Redis cannot be reached:
a job the stream cannot take is recorded in the fallback's local store and handed to this
process's workers (at most ``dispatch.queue_size`` such jobs), and the statuses of stream
jobs that cannot be written are kept and written once the store answers, so workers never
wait for Redis. When it answers again, local jobs not yet sent (queued, or waiting for a
retry) move into the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

import structlog

from otpd.clock import Clock
from otpd.config import DispatchConfig
from otpd.dispatch.queue import DeadLetter, Job, masked_recipient
from otpd.errors import UnavailableError
from otpd.models import Channel, Message, TaskRecord, TaskStatus
from otpd.sealing import Keyring, SealError
from otpd.store.base import AuditDraft, QueuedTask, Store, Suppression
from otpd.store.fallback import FallbackStore
from otpd.store.memory import MemoryStore
from otpd.store.redis.store import parse_task, task_mutable
from otpd.store.redis.streams import StreamEntry, TaskStreams

__all__ = ["DurableQueue"]

T = TypeVar("T")

log = structlog.get_logger("otpd.dispatch")

_PROMOTE_EVERY = 1.0  # seconds between sweeps of the delayed sets
_PROMOTE_BATCH = 200
_CLAIM_BATCH = 100
_IDLE_POLL = 0.02
_BACKOFF_MAX = 5.0
_LOCAL_EVERY = 0.25  # seconds between looks at the local jobs (with a fallback)


class DurableQueue:
    """A :class:`~otpd.dispatch.queue.DeliveryQueue` on Redis Streams."""

    def __init__(
        self,
        streams: TaskStreams,
        config: DispatchConfig,
        *,
        keyring: Keyring,
        consumer: str,
        clock: Clock,
        socket_timeout: float = 2.0,
        fallback: FallbackStore | None = None,
    ) -> None:
        self.streams = streams
        self.config = config
        self.keyring = keyring
        self.consumer = consumer
        self._clock = clock
        # a blocking read must end before the socket times out
        self._block_ms = max(50, min(1000, int(socket_timeout * 500)))
        self._prefetch = max(2, config.workers * 2)
        self._ready: asyncio.Queue[Job] | None = None
        self._local: set[str] = set()  # task ids buffered or with a worker here
        self._room = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._deferred: dict[asyncio.TimerHandle, Job] = {}
        self._promote_now = asyncio.Event()
        self._stopped = asyncio.Event()
        self._reading = False
        self._groups_ready = False
        # with a fallback: jobs accepted in this process while the stream could not take
        # them (until final or moved into the stream), which of them wait in _ready, their
        # retries (task id -> due wall time, job), and their dead letters
        self._fallback = fallback
        self._local_jobs: dict[str, Job] = {}
        self._local_ready: set[str] = set()
        self._local_waiting: dict[str, tuple[float, Job]] = {}
        self._local_dead: OrderedDict[str, tuple[DeadLetter, Job]] = OrderedDict()
        # status writes of stream jobs the store could not take, written when it answers
        self._unsaved: dict[str, Callable[[], Awaitable[object]]] = {}
        self._local_wake = asyncio.Event()
        self._local_task: asyncio.Task[None] | None = None
        self._moving = 0  # local jobs on their way into the stream

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._ready is not None:
            raise RuntimeError("the queue is already open")
        try:
            await self.streams.create_groups()
            self._groups_ready = True
        except UnavailableError:
            # down, read-only or full at start: the reader creates them once it can
            self._groups_ready = False
        self._ready = asyncio.Queue()
        self._reading = True
        self._room.set()
        # One read covers every partition on one node; on a cluster each partition is read
        # on its own (a command may only name keys of one slot).
        groups = (
            [(p,) for p in self.streams.partitions]
            if self.streams.store.cluster
            else [self.streams.partitions]
        )
        self._loops = [
            *(
                asyncio.create_task(self._read_loop(group), name="otpd-queue-reader")
                for group in groups
            ),
            asyncio.create_task(self._claim_loop(), name="otpd-queue-claimer"),
            asyncio.create_task(self._promote_loop(), name="otpd-queue-promoter"),
        ]
        if self._fallback is not None:
            # not among _loops: a stop lets it finish moving a job instead of cancelling it
            self._local_task = asyncio.create_task(self._local_loop(), name="otpd-queue-local")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close([])

    @property
    def ready(self) -> asyncio.Queue[Job]:
        if self._ready is None:
            raise UnavailableError("the delivery queue is not open")
        return self._ready

    @property
    def depth(self) -> int:
        return 0 if self._ready is None else self._ready.qsize()

    async def backlog(self) -> tuple[int, float]:
        # the streams are shared by every daemon; jobs accepted only here (the store's
        # fallback) are added
        local = len(self._local_jobs)
        return await self.streams.backlog() + local, await self.streams.oldest_age()

    # ------------------------------------------------------------------ intake

    async def put(self, job: Job) -> None:
        fallback = self._fallback
        if fallback is not None and fallback.degraded:
            await self._accept_locally(job)
            return
        try:
            entry = await self._enqueue(job)
        except UnavailableError as exc:
            if fallback is None:
                raise
            fallback.note_unavailable("enqueue", exc)
            await self._accept_locally(job)
            return
        if entry is None:
            raise UnavailableError("the delivery queue is full")

    async def put_refused(self, job: Job) -> None:
        # the same encoding and sealing as an accepted job, so that the time a request
        # takes does not tell a refusal apart; only the record is written
        self.keyring.seal(job.message.to_json(), job.record.task_id)
        masked_recipient(job.message)
        store: Store = self._fallback if self._fallback is not None else self.streams.store
        await store.put_task(job.record, self.config.task_ttl_seconds)

    def prepare(self, job: Job) -> QueuedTask | None:
        # with a fallback store a job may have to stay in this process, apart from its
        # code; on a cluster the code and the task are on different slots
        if self._fallback is not None or not self.streams.store.queues_with_codes():
            return None
        return self._queued(job)

    def _queued(self, job: Job) -> QueuedTask:
        """The record with the message sealed in it, as the stream's scripts write it."""
        record = job.record
        sealed = self.keyring.seal(job.message.to_json(), record.task_id)
        extra = {"body": sealed, "recipient": masked_recipient(job.message)}
        backlog = max(1, self.config.queue_size // len(self.streams.partitions))
        return QueuedTask(record, extra, self.config.task_ttl_seconds, backlog)

    async def _enqueue(self, job: Job) -> str | None:
        """Write the record (the message sealed in it) and its entry; None when full."""
        task = self._queued(job)
        return await self.streams.enqueue(task.record, task.extra, task.ttl, task.max_backlog)

    @property
    def _local_store(self) -> MemoryStore:
        if self._fallback is None:
            raise RuntimeError("a local job without a fallback store")
        return self._fallback.local

    def _held_locally(self, task_id: str) -> bool:
        """The local store keeps this task: a stream entry of it is a ghost (an enqueue
        that timed out but ran) and must not be delivered again."""
        return self._fallback is not None and self._fallback.local.holds_task(task_id)

    async def _accept_locally(self, job: Job) -> None:
        """The stream cannot take ``job``: keep it in this process, recorded locally."""
        if len(self._local_jobs) >= self.config.queue_size:
            raise UnavailableError("the delivery queue is full")
        job.entry = ""
        await self._local_store.put_task(job.record, self.config.task_ttl_seconds)
        self._local_jobs[job.record.task_id] = job
        self._offer(job)

    def _offer(self, job: Job) -> None:
        """Hand a job of this process to its workers."""
        if job.entry == "":
            self._local_ready.add(job.record.task_id)
        self.ready.put_nowait(job)

    async def _to_stream(self, job: Job) -> bool:
        """Move a local job into the stream, its record into Redis; False (and the job
        stays local) when the store cannot take it."""
        local = self._local_store
        task_id = job.record.task_id
        local.forget_task(task_id)  # before the write: the reader may take it at once
        self._moving += 1  # idle() waits: the job is neither here nor in the stream yet
        try:
            entry = await self._enqueue(job)
        except UnavailableError as exc:
            if self._fallback is not None:
                self._fallback.note_unavailable("enqueue", exc)
            entry = None
        except BaseException:
            await local.put_task(job.record, self.config.task_ttl_seconds)
            raise
        finally:
            self._moving -= 1
        if entry is None:
            await local.put_task(job.record, self.config.task_ttl_seconds)
            return False
        self._local_jobs.pop(task_id, None)
        return True

    # ------------------------------------------------------------------ workers

    async def get(self) -> Job:
        job = await self.ready.get()
        self._room.set()
        self._local_ready.discard(job.record.task_id)
        return job

    def _release(self, job: Job) -> None:
        self._local.discard(job.record.task_id)
        self.ready.task_done()

    def _one_script(self, job: Job) -> bool:
        """Whether the task's scripts can touch keys of other slots too: not for a job kept
        locally while Redis was away, and not on a cluster (the suppression list and the
        audit streams are on other slots than the task)."""
        return job.entry != "" and not self.streams.store.cluster

    def checks_suppression(self, job: Job) -> bool:
        return self._one_script(job)

    async def start(self, job: Job, unless_suppressed: str | None = None) -> bool | Suppression:
        record = job.record
        if job.entry == "":
            if unless_suppressed is not None:
                raise ValueError("a job kept locally is checked against the list apart")
            await self._local_store.update_task(record)
            return True
        if self._fallback is not None and self._fallback.degraded:
            # nothing is sent unrecorded: the job comes back once Redis answers
            raise UnavailableError("the store is unavailable")
        # While a job waited in this daemon's buffer, its entry aged: another daemon may
        # have claimed it. Only the holder sends, and holding it resets its idle time.
        started = await self.streams.start(
            self.consumer, record.task_id, job.entry, task_mutable(record), unless_suppressed
        )
        if started is False:
            self._release(job)
        return started

    def keeps_audit(self, job: Job) -> bool:
        return self._one_script(job)

    async def done(
        self, job: Job, *, dead_letter: bool = False, audit: AuditDraft | None = None
    ) -> None:
        record = job.record
        if job.entry == "":
            if audit is not None:
                raise ValueError("a job kept locally has its audit record written apart")
            await self._local_store.update_task(record)
            self._local_jobs.pop(record.task_id, None)
            if dead_letter:
                self._keep_dead(job)
            self.ready.task_done()
            return
        letter = None
        if dead_letter:
            letter = {
                "task_id": record.task_id,
                "channel": record.channel.value,
                "recipient": masked_recipient(job.message),
                "last_error": record.last_error,
                "attempts": record.attempts,
                "failed_at": record.updated_at,
            }
        finish = functools.partial(
            self.streams.finish,
            record.task_id,
            job.entry,
            task_mutable(record),
            letter,
            dead_ttl=self.config.dead_letter_ttl_seconds,
            now_ms=round(time.time() * 1000),
            audit=audit,
        )
        await self._write(job, finish)

    async def retry(self, job: Job, delay: float) -> None:
        due = time.time() + delay  # wall time, as the timers: not the injected clock
        if job.entry == "":
            await self._local_store.update_task(job.record)
            self._local_waiting[job.record.task_id] = (due, job)
            self.ready.task_done()
            self._later(delay, self._local_wake.set)
            return
        park = functools.partial(
            self.streams.retry,
            job.record.task_id,
            job.entry,
            round(due * 1000),
            task_mutable(job.record),
        )
        await self._write(job, park)
        # this daemon moves it back when due; the periodic sweep is the fallback
        self._later(delay, self._promote_now.set)

    def _later(self, delay: float, wake: Callable[[], None]) -> None:
        """Call ``wake`` after ``delay`` seconds; the handle is kept only until then."""

        def fire() -> None:
            self._timers.discard(handle)
            wake()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def _write(self, job: Job, write: Callable[[], Awaitable[object]]) -> None:
        """Write the status that ends this process's hold on a stream job. Without a
        fallback a failure raises (the dispatcher writes again); with one, the write is
        kept and made once the store answers, so the worker goes on with local jobs."""
        fallback = self._fallback
        if fallback is None:
            await write()
            self._release(job)
            return
        if not fallback.degraded:
            try:
                await write()
            except UnavailableError as exc:
                fallback.note_unavailable("save_task", exc)
            else:
                self._release(job)
                return
        # the entry stays pending under this consumer (and in _local, so that this
        # daemon's claimer leaves it alone) until the write is made
        self._unsaved[job.record.task_id] = write
        log.info("task.status_saved_later", task_id=job.record.task_id, status=job.record.status)
        self.ready.task_done()
        self._local_wake.set()

    async def defer(self, job: Job, delay: float) -> None:
        # The entry stays pending under this consumer: if this process dies meanwhile,
        # another daemon claims it after claim_idle_seconds.
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._deferred.pop(handle, None)
            if self._ready is not None:
                self._offer(job)
                self._ready.task_done()  # the put above counts the job again

        handle = loop.call_later(delay, again)
        self._deferred[handle] = job

    async def join(self) -> None:
        await self.ready.join()

    async def idle(self) -> None:
        while True:
            await self.ready.join()
            if (
                not self._deferred
                and not self._local_waiting
                and not self._unsaved
                and not self._moving
                and await self.streams.backlog() == 0
            ):
                return
            await asyncio.sleep(_IDLE_POLL)

    def hold_retries(self) -> None:
        """Stop taking new work (reads, claims, due retries): a drain finishes what this
        process holds; the rest stays in Redis for the other daemons or a restart."""
        self._reading = False
        self._stopped.set()
        self._room.set()
        self._promote_now.set()
        self._local_wake.set()
        for task in self._loops:
            task.cancel()

    async def close(self, interrupted: list[Job]) -> list[Job]:
        self.hold_retries()
        loops, self._loops = self._loops, []
        if loops:
            # a cancellation redis-py swallowed mid-command still ends the loop: each one
            # checks _reading after every call and never waits longer than one read
            await asyncio.wait(loops, timeout=self._block_ms / 1000 + 5)
        local_task, self._local_task = self._local_task, None
        if local_task is not None:
            # it stops after the job it is moving, bounded by one store call
            _, pending = await asyncio.wait([local_task], timeout=self._block_ms / 1000 + 5)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        unstarted: list[Job] = []
        for handle, job in self._deferred.items():
            handle.cancel()
            unstarted.append(job)
        self._deferred.clear()
        if self._ready is not None:
            while not self._ready.empty():
                unstarted.append(self._ready.get_nowait())
                self._ready.task_done()
        local_jobs = [job for job in unstarted if job.entry == ""]
        local_jobs += [job for _, job in self._local_waiting.values()]
        self._local_waiting.clear()
        self._local_ready.clear()
        degraded = self._fallback is not None and self._fallback.degraded
        # Jobs not started go back to the stream at once for the other daemons; ones cut
        # off mid-delivery stay pending (their record says "sending") and are claimed.
        for job in unstarted:
            if job.entry == "" or degraded:
                continue
            # when the store is down it stays pending here, claimed after claim_idle_seconds
            with contextlib.suppress(UnavailableError):
                await self.streams.retry(job.record.task_id, job.entry, 0, {})
        # Local jobs go into the stream when it takes them; the rest (and local ones cut
        # off mid-delivery, which nothing can claim) end with this process: the
        # dispatcher records them failed.
        leftover = [job for job in interrupted if job.entry == ""]
        for job in local_jobs:
            if degraded or not await self._to_stream(job):
                leftover.append(job)
        for job in leftover:
            self._local_jobs.pop(job.record.task_id, None)
        if self._unsaved and not degraded:
            await self._flush_unsaved()
        if self._unsaved:
            # pending under this consumer with the status before: claimed and sent again
            log.warning("queue.statuses_not_saved", tasks=sorted(self._unsaved))
            self._unsaved.clear()
        self._local.clear()
        return leftover

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(self, limit: int, channel: Channel | None) -> list[DeadLetter]:
        since = self._clock.time() - self.config.dead_letter_ttl_seconds
        out = [
            d
            for d in await self.streams.dead_letters(limit, since)
            if channel is None or d.channel == channel.value
        ]
        self._expire_local_dead(since)
        local = [
            letter
            for letter, _ in self._local_dead.values()
            if channel is None or letter.channel == channel.value
        ]
        if local:
            out = sorted([*out, *local], key=lambda d: d.failed_at, reverse=True)
        return out[:limit]

    def _keep_dead(self, job: Job) -> None:
        """A local job failed for good: its dead letter lives in this process."""
        record = job.record
        letter = DeadLetter(
            record.task_id,
            record.channel.value,
            masked_recipient(job.message),
            record.last_error,
            record.attempts,
            record.updated_at,
        )
        self._local_dead[record.task_id] = (letter, job)
        self._local_dead.move_to_end(record.task_id)
        while len(self._local_dead) > self.config.queue_size:
            self._local_dead.popitem(last=False)

    def _expire_local_dead(self, since: float) -> None:
        while self._local_dead:
            letter, _ = next(iter(self._local_dead.values()))
            if letter.failed_at >= since:
                break
            self._local_dead.popitem(last=False)

    async def replay(self, task_id: str) -> TaskRecord | None:
        now = self._clock.time()
        found = self._local_dead.pop(task_id, None)
        if found is not None:
            return await self._replay_local(found, now)
        if not await self.streams.replay(task_id, self.config.task_ttl_seconds, now):
            return None
        record = await self.streams.store.get_task(task_id)
        return record

    async def _replay_local(self, found: tuple[DeadLetter, Job], now: float) -> TaskRecord:
        """Queue a local dead letter again, into the stream when it takes it."""
        _, job = found
        record = dataclasses.replace(
            job.record,
            status=TaskStatus.QUEUED,
            attempts=0,
            last_error="",
            provider="",
            provider_message_id="",
            updated_at=now,
        )
        local = self._local_store
        local.forget_task(record.task_id)  # else the stale local record would be read
        try:
            await self.put(Job(record, job.message))
        except BaseException:
            self._local_dead[record.task_id] = found
            await local.put_task(job.record, self.config.task_ttl_seconds)
            raise
        return record

    # ------------------------------------------------------------------ background

    async def _read_loop(self, partitions: tuple[int, ...]) -> None:
        backoff = _Backoff()
        reread = False
        while self._reading:
            room = self._prefetch - self.ready.qsize()
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue

            if not self._groups_ready:
                # at start the store was down, or it came back empty (NOGROUP otherwise)
                self._groups_ready = await backoff.run(self._create_groups) is not None
                continue
            if reread:
                # The failed read may have been served, its reply lost with the connection:
                # those entries are pending under this consumer, which never saw them.
                # Take them now rather than after claim_idle_seconds.
                own = await backoff.run(
                    functools.partial(
                        self.streams.read,
                        self.consumer,
                        partitions,
                        _CLAIM_BATCH,
                        0,
                        pending=True,
                    )
                )
                if own is not None:
                    reread = False
                    fresh = [e for e in own if e.task_id not in self._local]
                    if fresh:
                        log.info("queue.reread", entries=len(fresh))
                        await self._take(fresh)
                continue
            count = max(1, room // len(self.streams.partitions))
            entries = await backoff.run(
                functools.partial(
                    self.streams.read, self.consumer, partitions, count, self._block_ms
                )
            )
            if entries is None:
                self._groups_ready = False
                reread = True
            elif not self._reading:
                # A read that outlived hold_retries (Python 3.11's wait_for, which redis-py
                # wraps each command in, can lose a cancellation): give its entries back to
                # the group at once instead of taking work while stopping.
                for e in entries:
                    with contextlib.suppress(UnavailableError):
                        await self.streams.retry(e.task_id, e.entry_id, 0, {})
                break
            else:
                await self._take(entries)

    async def _create_groups(self) -> bool:
        await self.streams.create_groups()
        return True

    async def _claim_loop(self) -> None:
        idle_ms = round(self.config.claim_idle_seconds * 1000)
        every = max(0.05, min(15.0, self.config.claim_idle_seconds / 4))
        backoff = _Backoff()
        while self._reading:
            for p in self.streams.partitions:
                if not self._groups_ready:
                    break  # NOGROUP until the reader has created them
                claim = functools.partial(
                    self.streams.claim, self.consumer, p, idle_ms, _CLAIM_BATCH
                )
                entries = await backoff.run(claim)
                if entries:
                    fresh = [e for e in entries if e.task_id not in self._local]
                    if fresh and not self._reading:
                        # claimed while stopping: back to the group, not into this daemon
                        for e in fresh:
                            with contextlib.suppress(UnavailableError):
                                await self.streams.retry(e.task_id, e.entry_id, 0, {})
                        break
                    if fresh:
                        log.info("queue.claimed", entries=len(fresh), partition=p)
                        await self._take(fresh)
            await self._pause(every)

    async def _promote_loop(self) -> None:
        backoff = _Backoff()
        while self._reading:
            now_ms = round(time.time() * 1000)
            for p in self.streams.partitions:
                await backoff.run(
                    functools.partial(self.streams.promote, p, now_ms, _PROMOTE_BATCH)
                )
            self._promote_now.clear()
            if self._reading:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_PROMOTE_EVERY):
                        await self._promote_now.wait()

    async def _local_loop(self) -> None:
        """With a fallback: brings local retries back when due; once the store answers,
        writes the statuses it could not take and moves local jobs into the stream."""
        fallback = self._fallback
        assert fallback is not None
        while not self._stopped.is_set():
            self._local_wake.clear()
            try:
                if not fallback.degraded:
                    await self._flush_unsaved()
                    await self._move_queued()
                await self._bring_back_due()
            except Exception:
                # the loop must outlive anything; what it did not do waits for the next round
                log.exception("queue.local_sweep_failed")
            if not self._stopped.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_LOCAL_EVERY):
                        await self._local_wake.wait()

    async def _flush_unsaved(self) -> None:
        for task_id, write in list(self._unsaved.items()):
            if self._fallback is not None and self._fallback.degraded:
                return
            try:
                await write()
            except UnavailableError as exc:
                if self._fallback is not None:
                    self._fallback.note_unavailable("save_task", exc)
                return
            del self._unsaved[task_id]
            self._local.discard(task_id)
            self._promote_now.set()  # a retry written late may be due already

    async def _bring_back_due(self) -> None:
        now = time.time()
        due = [job for at, job in self._local_waiting.values() if at <= now]
        moved = 0
        for job in due:
            if self._stopped.is_set():
                return  # held: close() takes the rest
            del self._local_waiting[job.record.task_id]
            back = self._fallback is not None and not self._fallback.degraded
            if back and await self._to_stream(job):
                moved += 1
                continue
            self._offer(job)
        if moved:
            log.info("queue.local_moved_to_stream", tasks=moved, kind="retrying")

    async def _move_queued(self) -> None:
        """Local jobs waiting for a worker here go into the stream (the stream's order
        is lost for them; they are not late yet)."""
        if not self._local_ready or self._ready is None:
            return
        ready = self._ready
        held: list[Job] = []
        while not ready.empty():
            held.append(ready.get_nowait())
        moving: list[Job] = []
        for job in held:
            if job.entry == "":
                moving.append(job)
            else:
                ready.put_nowait(job)
                ready.task_done()  # the put above counts it again
        self._local_ready.clear()
        self._room.set()  # the reader may read what these took room for
        # each moving job is still counted in ready until it is in the stream: join()
        # and idle() wait for it
        moved = 0
        for i, job in enumerate(moving):
            if self._stopped.is_set() or not await self._to_stream(job):
                for rest in moving[i:]:
                    self._offer(rest)
                    ready.task_done()
                break
            ready.task_done()
            moved += 1
        if moved:
            log.info("queue.local_moved_to_stream", tasks=moved, kind="queued")

    async def _pause(self, seconds: float) -> None:
        """Sleep, or less when the queue stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    async def _take(self, entries: list[StreamEntry]) -> None:
        """Turn entries into jobs; acknowledge the ones with nothing left to do."""
        for entry in entries:
            job = await self._job(entry)
            if job is not None:
                self._local.add(job.record.task_id)
                self.ready.put_nowait(job)

    async def _job(self, entry: StreamEntry) -> Job | None:
        record = parse_task(entry.record)
        if record is None or record.status.final or self._held_locally(record.task_id):
            # gone (expired), finished before a crash hid the acknowledgement, or a ghost
            # of a job this process accepted locally
            with contextlib.suppress(UnavailableError):
                await self.streams.ack(entry.partition, entry.entry_id)
            return None
        sealed = entry.record.get("body", "")
        try:
            message = Message.from_json(self.keyring.open(sealed, record.task_id))
        except (SealError, ValueError, TypeError) as exc:
            log.warning("queue.unreadable_task", task_id=record.task_id, error=str(exc))
            record = dataclasses.replace(
                record,
                status=TaskStatus.FAILED,
                last_error="unreadable: the stored message does not open with any key",
                updated_at=self._clock.time(),
            )
            with contextlib.suppress(UnavailableError):
                await self.streams.finish(
                    record.task_id,
                    entry.entry_id,
                    task_mutable(record),
                    None,
                    dead_ttl=self.config.dead_letter_ttl_seconds,
                    now_ms=round(time.time() * 1000),
                )
            return None
        return Job(record, message, entry.entry_id)


class _Backoff:
    """Runs store calls for a background loop; waits longer after each outage error."""

    def __init__(self) -> None:
        self._delay = 0.0

    async def run(self, call: Callable[[], Awaitable[T]]) -> T | None:
        try:
            result = await call()
        except UnavailableError:
            self._delay = min(_BACKOFF_MAX, max(0.1, self._delay * 2))
            await asyncio.sleep(self._delay)
            return None
        self._delay = 0.0
        return result
