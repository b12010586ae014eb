"""The queue behind the dispatcher: what a worker takes next, and what becomes of a job.

:class:`DeliveryQueue` is the seam; :class:`InProcessQueue` keeps jobs in this process's
memory (an ``asyncio.Queue`` plus timers for retries). A durable queue implements the same
protocol and persists what this one only remembers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from otpd.config import DispatchConfig
from otpd.errors import UnavailableError
from otpd.models import Message, TaskRecord
from otpd.store.base import Store

__all__ = ["DeliveryQueue", "InProcessQueue", "Job"]


@dataclass(slots=True)
class Job:
    """One task on its way: the record every change is written to, and what to send."""

    record: TaskRecord
    message: Message


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

    async def put(self, job: Job) -> None:
        """Record ``job`` as queued and accept it; raise ``UnavailableError`` when full."""

    async def get(self) -> Job:
        """The next job for a worker; waits until there is one."""

    async def done(self, job: Job) -> None:
        """``job`` reached a final status: write its record and let go of it."""

    async def retry(self, job: Job, delay: float) -> None:
        """Write ``job``'s record (retrying) and hand it out again after ``delay`` seconds."""

    async def join(self) -> None:
        """Wait until no job is queued or with a worker (waiting retries do not count)."""

    async def idle(self) -> None:
        """Wait until nothing is queued, with a worker, or waiting for a retry."""

    def hold_retries(self) -> None:
        """Stop bringing back retries as they come due (a drain does not wait for them)."""

    def close(self, interrupted: list[Job]) -> list[Job]:
        """Stop handing out jobs. Returns the jobs (``interrupted`` mid-delivery ones
        among them) that this queue cannot keep once the process ends: the dispatcher
        records them failed."""


class InProcessQueue:
    """Jobs in memory: fast, and gone with the process (the dispatcher fails what is left
    at shutdown, so every accepted task still ends in a visible state)."""

    def __init__(self, store: Store, config: DispatchConfig) -> None:
        self.store = store
        self.config = config
        self._queue: asyncio.Queue[Job] | None = None
        self._waiting: dict[str, tuple[Job, asyncio.TimerHandle]] = {}
        self._held: list[Job] = []
        self._retry_due: asyncio.Event | None = None

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
        self.close([])

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
        queue.put_nowait(job)

    async def get(self) -> Job:
        return await self.queue.get()

    async def done(self, job: Job) -> None:
        try:
            await self.store.update_task(job.record)
        finally:
            self.queue.task_done()

    async def retry(self, job: Job, delay: float) -> None:
        queue = self.queue
        try:
            await self.store.update_task(job.record)
        finally:
            handle = asyncio.get_running_loop().call_later(delay, self._due, job)
            self._waiting[job.record.task_id] = (job, handle)
            queue.task_done()

    def _due(self, job: Job) -> None:
        self._waiting.pop(job.record.task_id, None)
        self.queue.put_nowait(job)
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

    def close(self, interrupted: list[Job]) -> list[Job]:
        self.hold_retries()
        leftover, self._held = self._held, []
        if self._queue is not None:
            while not self._queue.empty():
                leftover.append(self._queue.get_nowait())
                self._queue.task_done()
        return [*leftover, *interrupted]
