"""What providers report after they accepted a message, applied to its task record.

A provider's message id is linked to its task when the provider accepts the message
(:meth:`DeliveryReports.linked`, called by the dispatcher), for providers that send
reports (:data:`REPORTING_PROVIDERS`). A verified report (:mod:`otpd.webhooks`) finds its
task through that link and moves it from ``sent`` to ``delivered``, ``bounced``,
``complained`` or ``undelivered``: once per provider event, in any order, never to a
weaker status (:meth:`~otpd.models.TaskStatus.replaced_by`). A report that arrives before
the link (a fast webhook, a slow status write) is parked, sealed, with the link's key and
applied when the link is made.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Protocol

import structlog

from otpd.crypto import Hasher
from otpd.dispatch.dispatcher import FailureHook
from otpd.errors import ValidationError
from otpd.metrics import Metrics
from otpd.models import TaskRecord, TaskStatus
from otpd.sealing import Keyring, SealError
from otpd.services.audit import AuditTrail
from otpd.store import Store
from otpd.store.reports import ReportOutcome, TaskReport
from otpd.webhooks.events import DeliveryEvent, DeliveryOutcome

__all__ = ["REPORTING_PROVIDERS", "DeliveryReports"]

log = structlog.get_logger("otpd.deliveries")

REPORTING_PROVIDERS = frozenset({"ses", "sendgrid", "mailgun", "twilio", "vonage"})
"""The providers whose reports otpd takes (a webhook route each)."""

_REASON_MAX = 200
_PARK_BINDING = "otpd-parked-report"
_SUPPRESSION_REASON_MAX = 64
_SUPPRESSION_KIND = {
    DeliveryOutcome.BOUNCED: "bounce",
    DeliveryOutcome.COMPLAINED: "complaint",
    DeliveryOutcome.UNDELIVERED: "opt_out",
    DeliveryOutcome.DELIVERED: "reported",
}


class Suppressor(Protocol):
    """The suppression list, as far as reports feed it."""

    async def add(self, address: str, reason: str, *, source: str = "api") -> object:
        """Suppress ``address``; ValidationError when it is not an address."""


_FAILED = frozenset({TaskStatus.UNDELIVERED, TaskStatus.BOUNCED})


class DeliveryReports:
    """Links provider messages to tasks and applies the providers' reports to them
    (the :class:`~otpd.webhooks.events.EventSink` of the webhook routes)."""

    def __init__(
        self,
        store: Store,
        *,
        hasher: Hasher,
        keyring: Keyring,
        metrics: Metrics,
        audit: AuditTrail,
        ttl: int,
        suppressions: Suppressor | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.keyring = keyring
        self.metrics = metrics
        self.audit = audit
        self.ttl = ttl
        self.suppressions = suppressions
        # told of a task a report marked undelivered or bounced (channel fallback)
        self.failures: FailureHook | None = None

    def _ref(self, provider: str, message_id: str) -> str:
        return self.hasher.digest("provider-message", provider, message_id)

    async def linked(self, record: TaskRecord) -> None:
        """Link a task the provider just accepted to the provider's message id, and apply
        what was reported for it meanwhile. Raises UnavailableError only."""
        if record.provider not in REPORTING_PROVIDERS or not record.provider_message_id:
            return
        ref = self._ref(record.provider, record.provider_message_id)
        for parked in await self.store.link_message(ref, record.task_id, self.ttl):
            event = self._unpark(parked)
            if event is not None:
                await self._apply(record.task_id, event, self._event_ref(event))

    async def apply(self, events: Sequence[DeliveryEvent]) -> None:
        """Apply verified reports; raises UnavailableError only (the provider retries)."""
        for event in events:
            ref = self._ref(event.provider, event.message_id)
            event_ref = self._event_ref(event)
            task_id = await self.store.message_task(ref, event_ref, self._park(event), self.ttl)
            if task_id is None:
                self.metrics.delivery_reports.labels(event.provider, "parked").inc()
                log.info("delivery.report_parked", provider=event.provider, status=event.outcome)
                await self._suppress(event)
                continue
            if await self._apply(task_id, event, event_ref) is not ReportOutcome.DUPLICATE:
                await self._suppress(event)

    async def _suppress(self, event: DeliveryEvent) -> None:
        """A permanent bounce, a complaint or an opt-out suppresses its recipient, whether
        or not its task is still known (the address is what keeps bouncing)."""
        if self.suppressions is None or not event.permanent or not event.recipient:
            return
        kind = _SUPPRESSION_KIND[event.outcome]
        reason = f"{kind}: {event.provider} {event.reason}".strip()[:_SUPPRESSION_REASON_MAX]
        try:
            await self.suppressions.add(event.recipient, reason, source="webhook")
        except ValidationError:
            log.info(
                "delivery.recipient_not_suppressed", provider=event.provider, why="not an address"
            )

    def _event_ref(self, event: DeliveryEvent) -> str:
        return self.hasher.digest("provider-event", event.provider, event.event_id)

    async def _apply(self, task_id: str, event: DeliveryEvent, event_ref: str) -> ReportOutcome:
        status = TaskStatus(event.outcome.value)
        reason = "" if event.outcome is DeliveryOutcome.DELIVERED else event.reason[:_REASON_MAX]
        report = TaskReport(event.message_id, event_ref, status, reason, event.occurred_at)
        outcome = await self.store.report_task(task_id, report)
        self.metrics.delivery_reports.labels(event.provider, outcome.value).inc()
        log.info(
            "delivery.report",
            task_id=task_id,
            provider=event.provider,
            status=status.value,
            outcome=outcome.value,
            reason=reason or None,
        )
        if outcome is ReportOutcome.APPLIED:
            await self.audit.record(
                f"message_{status.value}",
                task_id=task_id,
                provider=event.provider,
                reason=reason or None,
            )
            if status in _FAILED and self.failures is not None:
                record = await self.store.get_task(task_id)
                if record is not None and record.otp_id:
                    await self.failures.task_failed(record)
        return outcome

    # A parked report holds the recipient (for the suppression list): sealed at rest.

    def _park(self, event: DeliveryEvent) -> str:
        data = json.dumps(dataclasses.astuple(event), separators=(",", ":")).encode()
        return self.keyring.seal(data, _PARK_BINDING)

    def _unpark(self, parked: str) -> DeliveryEvent | None:
        try:
            fields = json.loads(self.keyring.open(parked, _PARK_BINDING))
            event = DeliveryEvent(*fields)
            return dataclasses.replace(event, outcome=DeliveryOutcome(event.outcome))
        except (SealError, ValueError, TypeError):
            log.warning("delivery.parked_report_unreadable")
            return None
