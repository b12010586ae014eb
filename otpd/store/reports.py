"""Values the store speaks in for what happens after a provider accepted a message: the
providers' reports (webhooks) applied to task records."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from otpd.models import TaskStatus

__all__ = ["PARKED_MAX", "ReportOutcome", "TaskReport"]

PARKED_MAX = 16
"""Reports kept for one provider message before it is linked to its task: more are dropped."""


@dataclass(frozen=True, slots=True)
class TaskReport:
    """A provider's report, as applied to one task record.

    It applies only while the record still names ``message_id`` (a replayed task was sent
    again under a new id) and its status is one ``status`` may replace
    (:meth:`TaskStatus.replaced_by`); ``event_ref`` (a hash of the provider's event id) is
    remembered on the record, so a repeat of the same event changes nothing.
    """

    message_id: str
    event_ref: str
    status: TaskStatus
    reason: str
    at: float


class ReportOutcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    """The same event was applied before."""
    STALE = "stale"
    """The record's status is as strong or stronger (a late ``delivered`` after a bounce)."""
    OTHER_MESSAGE = "other_message"
    """The record names another provider message now (it was sent again)."""
    GONE = "gone"
    """No such task record (it expired)."""
