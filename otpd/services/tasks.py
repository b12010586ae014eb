"""Read access to delivery task records."""

from __future__ import annotations

import re

from otpd.errors import NotFoundError
from otpd.models import TaskRecord
from otpd.store import Store

__all__ = ["TaskService"]

_TASK_ID_RE = re.compile(r"tsk_[0-9a-f]{24}")


class TaskService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, task_id: str) -> TaskRecord:
        record = await self.store.get_task(task_id) if _TASK_ID_RE.fullmatch(task_id) else None
        if record is None:
            raise NotFoundError("no such task", details={"task_id": task_id[:64]})
        return record
