"""Read access to delivery task records, and the dead letters among them."""

from __future__ import annotations

import re

from otpd.dispatch import Dispatcher
from otpd.dispatch.queue import DeadLetter
from otpd.errors import NotFoundError, ValidationError
from otpd.models import Channel, TaskRecord
from otpd.store import Store

__all__ = ["MAX_DEAD_LETTERS", "TaskService", "is_task_id"]

_TASK_ID_RE = re.compile(r"tsk_[0-9a-f]{24}")
MAX_DEAD_LETTERS = 1000


def is_task_id(value: str) -> bool:
    return _TASK_ID_RE.fullmatch(value) is not None


class TaskService:
    def __init__(self, store: Store, dispatcher: Dispatcher) -> None:
        self.store = store
        self.dispatcher = dispatcher

    async def get(self, task_id: str) -> TaskRecord:
        record = await self.store.get_task(task_id) if _TASK_ID_RE.fullmatch(task_id) else None
        if record is None:
            raise NotFoundError("no such task", details={"task_id": task_id[:64]})
        return record

    async def dead_letters(
        self, *, limit: int = 100, channel: str | None = None
    ) -> list[DeadLetter]:
        """Tasks that failed for good, newest first."""
        if not 1 <= limit <= MAX_DEAD_LETTERS:
            raise ValidationError.field("limit", f"must be 1 to {MAX_DEAD_LETTERS}")
        wanted = None
        if channel is not None:
            try:
                wanted = Channel(channel)
            except ValueError:
                raise ValidationError.field("channel", "must be email or sms") from None
        return await self.dispatcher.dead_letters(limit, wanted)

    async def replay(self, task_id: str) -> TaskRecord:
        """Queue a dead letter again under its task id (attempts reset)."""
        record = await self.dispatcher.replay(task_id) if _TASK_ID_RE.fullmatch(task_id) else None
        if record is None:
            raise NotFoundError("no such dead letter", details={"task_id": task_id[:64]})
        return record
