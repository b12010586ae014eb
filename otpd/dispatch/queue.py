"""The queue behind the dispatcher: what a worker takes next, and what becomes of a job.

:class:`DeliveryQueue` is the seam; :class:`InProcessQueue` keeps jobs in this process's
memory (an ``asyncio.Queue`` plus timers for retries). A durable queue implements the same
protocol and persists what this one only remembers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from otpd.clock import Clock, SystemClock
from otpd.config import DispatchConfig
from otpd.errors import UnavailableError
from otpd.models import Channel, DeadLetter, Message, TaskRecord, TaskStatus
from otpd.redaction import mask_email, mask_phone
from otpd.store.base import AuditDraft, QueuedTask, Store, Suppression

__all__ = ["DeadLetter", "DeliveryQueue", "InProcessQueue", "Job", "masked_recipient"]


@dataclass(slots=True)
class Job:
    """One task on its way: the record every change is written to, and what to send.

    ``entry`` names the job's entry in a durable queue ("" in memory).
    """

    record: TaskRecord
    message: Message
    entry: str = ""


def masked_recipient(message: Message) -> str:
    if message.channel is Channel.EMAIL:
        return mask_email(message.to)
    return mask_phone(message.to)


class DeliveryQueue(Protocol):
    """Accepts jobs, hands them to workers, and keeps each job's record up to date."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def depth(self) -> int:
        """Jobs accepted and not yet taken by a worker."""

    async def backlog(self) -> tuple[int, float]:
        """For the metrics: tasks queued, with a worker or waiting for a retry, and the
        age in seconds of the oldest one queued or with a worker (0 when none)."""

    async def put(self, job: Job) -> None:
        """Record ``job`` as queued and accept it; raise ``UnavailableError`` when full."""

    def prepare(self, job: Job) -> QueuedTask | None:
        """``job`` as a task the store records along with the code it carries
        (``Store.issue_otp(enqueue=...)``: no round trip of its own), or None when this
        queue cannot take it that way (then :meth:`put` it)."""

    async def put_refused(self, job: Job) -> None:
        """Record ``job`` (already final: refused) without queueing it, doing the work of a
        :meth:`put` so that timing does not tell a refusal from an accepted request."""

    async def get(self) -> Job:
        """The next job for a worker; waits until there is one."""

    def checks_suppression(self, job: Job) -> bool:
        """Whether :meth:`start` can check ``job``'s recipient against the suppression
        list in its own step (``unless_suppressed``): no round trip of its own."""

    async def start(self, job: Job, unless_suppressed: str | None = None) -> bool | Suppression:
        """Record the attempt (status ``sending``) before the provider call. False when
        the job is no longer this process's (another daemon took it over): it is let go
        then, and must not be sent. With ``unless_suppressed`` (the keyed hash of the
        recipient; only where :meth:`checks_suppression`), a suppressed recipient's job
        is not started and its :class:`Suppression` is returned. Raises
        ``UnavailableError`` and changes nothing when the store cannot take it."""

    def keeps_audit(self, job: Job) -> bool:
        """Whether :meth:`done` can keep the delivery's audit record in its own step."""

    async def done(
        self, job: Job, *, dead_letter: bool = False, audit: AuditDraft | None = None
    ) -> None:
        """``job`` reached a final status: write its record and let go of it; a
        ``dead_letter`` is kept for :meth:`replay`, and ``audit`` (only where
        :meth:`keeps_audit`) in the same step. A failed write raises and leaves the job
        held, so the caller can write again."""

    async def retry(self, job: Job, delay: float) -> None:
        """Write ``job``'s record (retrying) and hand it out again after ``delay`` seconds."""

    async def defer(self, job: Job, delay: float) -> None:
        """The store could not be reached for ``job``: hand it out again after ``delay``
        seconds, writing nothing."""

    async def dead_letters(self, limit: int, channel: Channel | None) -> list[DeadLetter]:
        """The newest dead letters first."""

    async def replay(self, task_id: str) -> TaskRecord | None:
        """Queue a dead letter again (attempts reset); None when there is no such one."""

    async def join(self) -> None:
        """Wait until no job is queued or with a worker (waiting retries do not count)."""

    async def idle(self) -> None:
        """Wait until nothing is queued, with a worker, or waiting for a retry."""

    def hold_retries(self) -> None:
        """Stop bringing back retries as they come due (a drain does not wait for them)."""

    async def close(self, interrupted: list[Job]) -> list[Job]:
        """Stop handing out jobs. Returns the jobs (``interrupted`` mid-delivery ones
        among them) that this queue cannot keep once the process ends: the dispatcher
        records them failed."""


class InProcessQueue:
    """Jobs in memory: fast, and gone with the process (the dispatcher fails what is left
    at shutdown, so every accepted task still ends in a visible state)."""

    def __init__(self, store: Store, config: DispatchConfig, clock: Clock | None = None) -> None:
        self.store = store
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self._queue: asyncio.Queue[Job] | None = None
        self._waiting: dict[str, tuple[Job, asyncio.TimerHandle]] = {}
        self._held: list[Job] = []
        self._retry_due: asyncio.Event | None = None
        self._deferred: dict[asyncio.TimerHandle, Job] = {}
        self._dead: OrderedDict[str, tuple[DeadLetter, Job]] = OrderedDict()
        self._queued_at: dict[str, float] = {}  # task id -> when queued, oldest first

    async def __aenter__(self) -> Self:
        if self._queue is not None:
            raise RuntimeError("the queue is already open")
        self._queue = asyncio.Queue()
        self._retry_due = asyncio.Event()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close([])

    @property
    def queue(self) -> asyncio.Queue[Job]:
        if self._queue is None:
            raise UnavailableError("the delivery queue is not open")
        return self._queue

    @property
    def depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def put(self, job: Job) -> None:
        queue = self.queue
        if queue.qsize() + len(self._waiting) >= self.config.queue_size:
            raise UnavailableError("the delivery queue is full")
        await self.store.put_task(job.record, self.config.task_ttl_seconds)
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        self.queue.put_nowait(job)
        self._queued_at.setdefault(job.record.task_id, self._clock.time())

    async def backlog(self) -> tuple[int, float]:
        waiting = len(self._queued_at) + len(self._waiting)  # queued, with a worker, deferred
        oldest = next(iter(self._queued_at.values()), None)
        return waiting, 0.0 if oldest is None else max(0.0, self._clock.time() - oldest)

    async def put_refused(self, job: Job) -> None:
        await self.store.put_task(job.record, self.config.task_ttl_seconds)

    def prepare(self, job: Job) -> QueuedTask | None:
        return None  # the jobs live in this process: nothing to write along with a code

    async def get(self) -> Job:
        return await self.queue.get()

    def checks_suppression(self, job: Job) -> bool:
        return False  # the dispatcher reads the store (a memory store: no round trip)

    async def start(self, job: Job, unless_suppressed: str | None = None) -> bool | Suppression:
        if unless_suppressed is not None:
            raise ValueError("this queue does not check suppressions")
        await self.store.update_task(job.record)
        return True

    def keeps_audit(self, job: Job) -> bool:
        return False  # the trail writes it (a memory store: no round trip)

    async def done(
        self, job: Job, *, dead_letter: bool = False, audit: AuditDraft | None = None
    ) -> None:
        if audit is not None:
            raise ValueError("this queue does not keep audit records")
        await self.store.update_task(job.record)
        self.queue.task_done()
        self._queued_at.pop(job.record.task_id, None)
        if dead_letter:
            self._keep_dead(job)

    def _keep_dead(self, job: Job) -> None:
        record = job.record
        letter = DeadLetter(
            record.task_id,
            record.channel.value,
            masked_recipient(job.message),
            record.last_error,
            record.attempts,
            record.updated_at,
        )
        self._dead[record.task_id] = (letter, job)
        self._dead.move_to_end(record.task_id)
        while len(self._dead) > self.config.queue_size:
            self._dead.popitem(last=False)

    def _expire_dead(self) -> None:
        horizon = self._clock.time() - self.config.dead_letter_ttl_seconds
        while self._dead:
            letter, _ = next(iter(self._dead.values()))
            if letter.failed_at >= horizon:
                break
            self._dead.popitem(last=False)

    async def dead_letters(self, limit: int, channel: Channel | None) -> list[DeadLetter]:
        self._expire_dead()
        out = []
        for letter, _ in reversed(self._dead.values()):
            if channel is None or letter.channel == channel.value:
                out.append(letter)
                if len(out) >= limit:
                    break
        return out

    async def replay(self, task_id: str) -> TaskRecord | None:
        self._expire_dead()
        found = self._dead.pop(task_id, None)
        if found is None:
            return None
        _, job = found
        record = dataclasses.replace(
            job.record,
            status=TaskStatus.QUEUED,
            attempts=0,
            last_error="",
            provider="",
            provider_message_id="",
            updated_at=self._clock.time(),
        )
        try:
            await self.put(Job(record, job.message))
        except BaseException:
            self._dead[task_id] = found
            raise
        return record

    async def defer(self, job: Job, delay: float) -> None:
        queue = self.queue
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._deferred.pop(handle, None)
            self._enqueue(job)
            queue.task_done()  # the put above counts the job again

        handle = loop.call_later(delay, again)
        self._deferred[handle] = job

    async def retry(self, job: Job, delay: float) -> None:
        queue = self.queue
        try:
            await self.store.update_task(job.record)
        finally:
            handle = asyncio.get_running_loop().call_later(delay, self._due, job)
            self._waiting[job.record.task_id] = (job, handle)
            self._queued_at.pop(job.record.task_id, None)
            queue.task_done()

    def _due(self, job: Job) -> None:
        self._waiting.pop(job.record.task_id, None)
        self._enqueue(job)
        if self._retry_due is not None:
            self._retry_due.set()

    async def join(self) -> None:
        await self.queue.join()

    async def idle(self) -> None:
        while True:
            await self.queue.join()
            if not self._waiting or self._retry_due is None:
                return
            self._retry_due.clear()
            await self._retry_due.wait()

    def hold_retries(self) -> None:
        for job, handle in self._waiting.values():
            handle.cancel()
            self._held.append(job)
        self._waiting.clear()

    async def close(self, interrupted: list[Job]) -> list[Job]:
        self.hold_retries()
        leftover, self._held = self._held, []
        for handle, job in self._deferred.items():
            handle.cancel()
            leftover.append(job)
            if self._queue is not None:
                self._queue.task_done()
        self._deferred.clear()
        self._queued_at.clear()
        if self._queue is not None:
            while not self._queue.empty():
                leftover.append(self._queue.get_nowait())
                self._queue.task_done()
        return [*leftover, *interrupted]
