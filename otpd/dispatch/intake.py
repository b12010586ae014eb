"""The queue of a daemon in the ``api`` role: it writes tasks into the durable queue's
streams and reads none of them back; processes in the ``worker`` role deliver them.

Its dispatcher's workers wait on :meth:`IntakeQueue.get` for good: nothing is ever handed
out here. Dead letters and replays go straight to the streams, as in any other daemon.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import NoReturn, Self

from otpd.dispatch.durable import DurableQueue
from otpd.dispatch.queue import DeadLetter, Job
from otpd.models import Channel, TaskRecord
from otpd.store.base import AuditDraft, QueuedTask, Suppression

__all__ = ["IntakeQueue"]

_IDLE_POLL = 0.02


class IntakeQueue:
    """A :class:`~otpd.dispatch.queue.DeliveryQueue` that only accepts: ``put`` writes the
    task (record and stream entry) through ``queue``, which is never entered, so none of
    its readers, claimers or promoters run in this process."""

    def __init__(self, queue: DurableQueue) -> None:
        self._queue = queue
        self._never: asyncio.Event | None = None

    async def __aenter__(self) -> Self:
        if self._never is not None:
            raise RuntimeError("the queue is already open")
        self._never = asyncio.Event()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @property
    def depth(self) -> int:
        return 0

    async def backlog(self) -> tuple[int, float]:
        return await self._queue.backlog()

    async def put(self, job: Job) -> None:
        await self._queue.put(job)

    async def put_refused(self, job: Job) -> None:
        await self._queue.put_refused(job)

    def prepare(self, job: Job) -> QueuedTask | None:
        return self._queue.prepare(job)

    async def get(self) -> Job:
        if self._never is None:
            raise RuntimeError("the queue is not open")
        await self._never.wait()  # never set: a worker here waits until it is cancelled
        raise RuntimeError("unreachable")

    def checks_suppression(self, job: Job) -> bool:
        return False

    async def start(self, job: Job, unless_suppressed: str | None = None) -> bool | Suppression:
        self._not_handed_out()

    def keeps_audit(self, job: Job) -> bool:
        return False

    async def done(
        self, job: Job, *, dead_letter: bool = False, audit: AuditDraft | None = None
    ) -> None:
        self._not_handed_out()

    async def retry(self, job: Job, delay: float) -> None:
        self._not_handed_out()

    async def defer(self, job: Job, delay: float) -> None:
        self._not_handed_out()

    @staticmethod
    def _not_handed_out() -> NoReturn:
        raise RuntimeError("the api role hands out no jobs")

    async def dead_letters(self, limit: int, channel: Channel | None) -> list[DeadLetter]:
        return await self._queue.dead_letters(limit, channel)

    async def replay(self, task_id: str) -> TaskRecord | None:
        return await self._queue.replay(task_id)

    async def join(self) -> None:
        return None

    async def idle(self) -> None:
        """Until the workers (elsewhere) have delivered everything in the streams."""
        while True:
            if await self._queue.streams.backlog() == 0:
                return
            await asyncio.sleep(_IDLE_POLL)

    def hold_retries(self) -> None:
        return None

    async def close(self, interrupted: list[Job]) -> list[Job]:
        return list(interrupted)
