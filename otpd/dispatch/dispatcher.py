"""Background delivery: N workers over a delivery queue, retries, recorded task status,
and a drain with a deadline.

Callers only use :meth:`Dispatcher.enqueue`, which returns once the queue accepted the task
(and recorded it); which queue that is, is the :class:`~otpd.dispatch.queue.DeliveryQueue`
seam.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Protocol, Self

import structlog

from otpd.clock import Clock
from otpd.config import DispatchConfig
from otpd.dispatch.queue import DeadLetter, DeliveryQueue, InProcessQueue, Job
from otpd.dispatch.retry import RetryPolicy
from otpd.errors import DeliveryError, PermanentDeliveryError, UnavailableError
from otpd.metrics import Metrics
from otpd.models import Channel, Message, TaskRecord, TaskStatus
from otpd.providers.chain import ProviderChain
from otpd.store.base import AuditDraft, LimitExceeded, QueuedTask, Store, Suppression

__all__ = [
    "Admission",
    "AuditSink",
    "Dispatcher",
    "ReportLink",
    "ShutdownReport",
    "SuppressionCheck",
    "new_task_id",
]

log = structlog.get_logger("otpd.dispatch")

_CANCEL_ROUNDS = 20
_CANCEL_WAIT = 0.25
_DEFER_SECONDS = 1.0  # a job the store could not take for comes back after this
_SAVE_RETRY_MAX = 2.0
_EXPIRED = "expired: what the message carries expired before it could be sent"


def new_task_id() -> str:
    return "tsk_" + secrets.token_hex(12)


class Admission(Protocol):
    """The sending limits a task must pass once before its first attempt."""

    async def admit(self, message: Message, member: str, now: float) -> LimitExceeded | None:
        """Count one send of ``message`` unless a limit is full (then count nothing)."""


class ReportLink(Protocol):
    """Where a task a provider accepted is linked to the provider's message id, so that
    the provider's reports (webhooks) find it."""

    async def linked(self, record: TaskRecord) -> None:
        """Link ``record`` (status ``sent``); raises UnavailableError only."""


class SuppressionCheck(Protocol):
    """The suppression list: recipients no provider may be handed a message for."""

    def key_of(self, address: str) -> str | None:
        """The keyed hash ``address`` is suppressed under, or None when no route could
        have suppressed it."""

    async def lookup(self, key: str) -> Suppression | None:
        """The suppression kept under ``key``, or None; raises UnavailableError only."""


class FailureHook(Protocol):
    """Told of a task that ended ``failed``, or that a provider reported ``undelivered`` or
    ``bounced`` (a code's channel fallback)."""

    async def task_failed(self, record: TaskRecord) -> None:
        """React to ``record`` having failed for good; never raises."""


class AuditSink(Protocol):
    """Where the final status of each delivery is recorded (the audit trail)."""

    async def record(self, event: str, *, recipient: str | None = None, **fields: str) -> None:
        """Record ``event``; ``recipient`` in clear (the sink masks it). Never raises."""

    def draft(
        self,
        user_id: str | None,
        event: str | None = None,
        /,
        *,
        recipient: str | None = None,
        **fields: str,
    ) -> AuditDraft | None:
        """The whole record of ``event`` for the queue to keep with the final status
        (None when the trail keeps nothing)."""

    def logged(
        self, event: str, *, log_as: str | None = None, masked: str | None = None, **fields: str
    ) -> None:
        """The log line of a record kept elsewhere (``masked``: its recipient, masked)."""


class _InFlight:
    """A count of pieces of work under way, and a way to wait until there are none."""

    def __init__(self) -> None:
        self._count = 0
        self._none = asyncio.Event()
        self._none.set()

    def begin(self) -> None:
        self._count += 1
        self._none.clear()

    def end(self) -> None:
        self._count -= 1
        if not self._count:
            self._none.set()

    async def idle(self) -> None:
        await self._none.wait()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A job whose task the store writes with its code (:meth:`Dispatcher.prepare`)."""

    job: Job
    queued: QueuedTask


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """What the drain could not finish; those tasks are recorded as failed."""

    unfinished: tuple[str, ...] = field(default_factory=tuple)
    drained_in_time: bool = True


class Dispatcher:
    """Delivers messages through per-channel provider chains in background workers."""

    def __init__(
        self,
        store: Store,
        chains: Mapping[Channel, ProviderChain],
        config: DispatchConfig,
        *,
        clock: Clock,
        metrics: Metrics,
        queue: DeliveryQueue | None = None,
        retry: RetryPolicy | None = None,
        admission: Admission | None = None,
        audit: AuditSink | None = None,
        reports: ReportLink | None = None,
        suppressions: SuppressionCheck | None = None,
    ) -> None:
        self.store = store
        self.chains = dict(chains)
        self.config = config
        self._clock = clock
        self._metrics = metrics
        self.queue: DeliveryQueue = queue or InProcessQueue(store, config, clock)
        self.retry = retry or RetryPolicy(
            config.max_attempts, config.backoff_base_seconds, config.backoff_max_seconds
        )
        self.admission = admission
        self.audit = audit
        self.reports = reports
        self.suppressions = suppressions
        self.failures: FailureHook | None = None
        self._linking = _InFlight()
        self._workers: list[asyncio.Task[None]] = []
        self._interrupted: list[Job] = []
        self._accepting = False
        self._open = False
        self.last_report: ShutdownReport | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("the dispatcher is already running")
        await self.queue.__aenter__()
        self._open = True
        self._metrics.add_sampler(self._sample)
        self._workers = [
            asyncio.create_task(self._work(), name=f"otpd-worker-{i}")
            for i in range(self.config.workers)
        ]
        self._accepting = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.last_report = await self.shutdown()

    @property
    def running(self) -> bool:
        return self._accepting and any(not w.done() for w in self._workers)

    @property
    def depth(self) -> int:
        return self.queue.depth

    async def _sample(self) -> None:
        """Set the queue gauges (run at every scrape of the metrics)."""
        backlog, oldest = await self.queue.backlog()
        self._metrics.queue_depth.set(self.queue.depth)
        self._metrics.queue_backlog.set(backlog)
        self._metrics.queue_oldest_age.set(oldest)

    async def wait_idle(self) -> None:
        """Wait until every accepted task reached a final status (retries included) and
        every sent one is linked to its provider message."""
        await self.queue.idle()
        await self._linking.idle()

    async def _drained(self) -> None:
        await self.queue.join()
        await self._linking.idle()

    async def shutdown(self) -> ShutdownReport:
        """Stop intake, drain within ``drain_timeout_seconds``, fail what the queue cannot
        keep."""
        if not self._open:
            return self.last_report or ShutdownReport()
        self._open = False
        self._accepting = False
        self._metrics.remove_sampler(self._sample)
        # Retries waiting for their backoff would outlive the drain: hold them now.
        self.queue.hold_retries()
        drained = True
        try:
            await asyncio.wait_for(self._drained(), self.config.drain_timeout_seconds)
        except TimeoutError:
            drained = False
        await self._stop_workers()
        interrupted, self._interrupted = self._interrupted, []
        leftover = await self.queue.close(interrupted)
        for job in leftover:
            await self._record_final(job, TaskStatus.FAILED, "shutdown: not delivered before stop")
        await self.queue.__aexit__(None, None, None)
        report = ShutdownReport(tuple(j.record.task_id for j in leftover), drained)
        log.info(
            "dispatcher.stopped",
            drained_in_time=drained,
            unfinished=len(report.unfinished),
            unfinished_tasks=list(report.unfinished),
        )
        return report

    async def _stop_workers(self) -> None:
        """Cancel the workers and wait for them, cancelling again if a library swallowed
        the first cancellation (redis-py can, mid-command)."""
        pending = set(self._workers)
        for _ in range(_CANCEL_ROUNDS):
            for worker in pending:
                worker.cancel()
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_WAIT)
            if not pending:
                break
        else:
            log.error("dispatcher.workers_did_not_stop", workers=len(pending))
        self._workers = []

    # ------------------------------------------------------------------ intake

    def _new_record(
        self, message: Message, status: TaskStatus, error: str = "", task_id: str | None = None
    ) -> TaskRecord:
        now = self._clock.time()
        return TaskRecord(
            task_id=task_id or new_task_id(),
            channel=message.channel,
            status=status,
            tag=message.tag,
            created_at=now,
            updated_at=now,
            last_error=error,
            otp_id=message.otp_id,
        )

    async def enqueue(self, message: Message, *, task_id: str | None = None) -> TaskRecord:
        """Record a task for ``message`` and queue it; returns the recorded task.

        ``task_id`` lets a caller fix the id in advance (idempotency keys).
        """
        if message.channel not in self.chains:
            raise UnavailableError(f"no {message.channel} providers are configured")
        if not self._accepting:
            raise UnavailableError("the dispatcher is not accepting messages")
        record = self._new_record(message, TaskStatus.QUEUED, task_id=task_id)
        await self.queue.put(Job(record, message))
        self._metrics.queue_depth.set(self.queue.depth)
        return record

    def prepare(self, message: Message, *, task_id: str | None = None) -> Prepared | None:
        """A task for ``message`` that the store can record and queue in the same step as
        the code it carries (``Store.issue_otp(enqueue=...)``), then :meth:`accepted`; None
        when the queue cannot take it that way (then :meth:`enqueue` it). Raises
        UnavailableError like :meth:`enqueue`."""
        if message.channel not in self.chains:
            raise UnavailableError(f"no {message.channel} providers are configured")
        if not self._accepting:
            raise UnavailableError("the dispatcher is not accepting messages")
        job = Job(self._new_record(message, TaskStatus.QUEUED, task_id=task_id), message)
        queued = self.queue.prepare(job)
        return None if queued is None else Prepared(job, queued)

    def accepted(self, prepared: Prepared) -> TaskRecord:
        """The task of a :meth:`prepare` that the store recorded and queued."""
        self._metrics.queue_depth.set(self.queue.depth)
        return prepared.job.record

    async def reject(
        self, message: Message, reason: str, *, task_id: str | None = None
    ) -> TaskRecord:
        """Record a task that ends ``failed`` with ``reason`` without sending anything.

        For callers that must answer like an accepted send (no account enumeration) but
        were refused, e.g. by a silent rate limit: the refusal stays visible in the task.
        """
        record = self._new_record(message, TaskStatus.FAILED, reason, task_id)
        await self.queue.put_refused(Job(record, message))
        self._metrics.tasks.labels(message.channel.value, TaskStatus.FAILED.value).inc()
        return record

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(self, limit: int, channel: Channel | None = None) -> list[DeadLetter]:
        """Tasks that failed for good, newest first (kept ``dead_letter_ttl_seconds``)."""
        return await self.queue.dead_letters(limit, channel)

    async def replay(self, task_id: str) -> TaskRecord | None:
        """Send a dead letter again under the same task id, attempts reset; None when
        there is no such dead letter."""
        if not self._accepting:
            raise UnavailableError("the dispatcher is not accepting messages")
        record = await self.queue.replay(task_id)
        if record is not None:
            log.info("task.replayed", task_id=task_id)
        return record

    # ------------------------------------------------------------------ workers

    async def _work(self) -> None:
        queue = self.queue
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # a cancellation was swallowed below us: stop instead of waiting for more
                raise asyncio.CancelledError
            job = await queue.get()
            self._metrics.queue_depth.set(queue.depth)
            try:
                await self._attempt(job)
            except asyncio.CancelledError:
                # cancelled mid-delivery by a drain that ran out of time
                self._interrupted.append(job)
                raise
            except UnavailableError:
                # The store is down before anything was sent: nothing is final, the job
                # comes back later (a durable entry stays pending meanwhile).
                job.record.status = (
                    TaskStatus.QUEUED if job.record.attempts == 0 else (TaskStatus.RETRYING)
                )
                log.info("task.deferred", task_id=job.record.task_id, reason="store_unavailable")
                await self.queue.defer(job, _DEFER_SECONDS)
            except Exception:
                # A worker must survive anything; the task still ends in a visible state.
                log.exception("dispatcher.worker_error", task_id=job.record.task_id)
                await self._finish(job, TaskStatus.FAILED, "internal error during delivery")
            # A full queue hands out the next job without waiting, and a delivery may not
            # wait on anything either (the dev outbox, the memory store): yield, so that a
            # backlog of deliveries never holds the event loop.
            await asyncio.sleep(0)

    async def _attempt(self, job: Job) -> None:
        record = job.record
        if job.message.expired(self._clock.time()):
            # what it carries no longer works: a late code only confuses its reader
            await self._finish(job, TaskStatus.FAILED, _EXPIRED, dead_letter=True)
            return
        suppressions = self.suppressions
        key = None if suppressions is None else suppressions.key_of(job.message.to)
        admitting = record.attempts == 0 and self.admission is not None
        admitting = admitting and not job.message.limits_counted
        # the queue's start checks the suppression in its own step where it can (one round
        # trip less); not ahead of an admission, which a suppressed recipient must not use
        folded = key is not None and not admitting and self.queue.checks_suppression(job)
        if suppressions is not None and key is not None and not folded:
            # a store that cannot answer raises UnavailableError: the job is deferred
            found = await suppressions.lookup(key)
            if found is not None:
                await self._finish(job, TaskStatus.FAILED, f"suppressed: {found.reason}")
                return
        if record.attempts == 0 and not await self._admit(job):
            return
        started = await self._mark_sending(job, key if folded else None)
        if isinstance(started, Suppression):
            await self._finish(job, TaskStatus.FAILED, f"suppressed: {started.reason}")
            return
        if not started:
            return
        chain = self.chains[record.channel]
        try:
            result = await chain.send(job.message)
        except PermanentDeliveryError as exc:
            await self._finish(
                job,
                TaskStatus.FAILED,
                f"{exc.reason}: {exc.message}",
                exc.provider,
                dead_letter=True,
            )
            return
        except DeliveryError as exc:
            error = f"{exc.reason}: {exc.message}"
            if self._accepting and self.retry.should_retry(record.attempts):
                delay = self.retry.delay(record.attempts)
                record.last_error = error
                self._touch(job, TaskStatus.RETRYING)
                await self._until_saved(job, lambda: self.queue.retry(job, delay))
                log.info(
                    "task.retrying",
                    task_id=record.task_id,
                    attempts=record.attempts,
                    delay=round(delay, 3),
                    reason=exc.reason,
                )
            else:
                await self._finish(job, TaskStatus.FAILED, error, dead_letter=True)
            return
        record.last_error = ""
        record.provider_message_id = result.message_id
        if self.reports is None:
            await self._finish(job, TaskStatus.SENT, "", result.provider)
            return
        # The link follows the status write (a report applies to a sent task only) but
        # counts as part of the delivery: wait_idle and the drain wait for it too.
        self._linking.begin()
        try:
            await self._finish(job, TaskStatus.SENT, "", result.provider)
            await self._link(self.reports, record)
        finally:
            self._linking.end()

    async def _link(self, reports: ReportLink, record: TaskRecord) -> None:
        """Link a sent task to the provider's message id; without the link the provider's
        reports find no task (the message itself is sent and recorded either way)."""
        try:
            await reports.linked(record)
        except UnavailableError:
            log.warning("task.not_linked", task_id=record.task_id, provider=record.provider)

    async def _admit(self, job: Job) -> bool:
        """Count the sending limits once per task; a refused task ends failed."""
        if self.admission is None or job.message.limits_counted:
            return True
        refused = await self.admission.admit(job.message, job.record.task_id, self._clock.time())
        if refused is None:
            return True
        self._metrics.rate_limited.labels(refused.scope).inc()
        await self._finish(job, TaskStatus.FAILED, f"rate_limited: {refused.scope}")
        return False

    def _touch(self, job: Job, status: TaskStatus) -> None:
        job.record.status = status
        job.record.updated_at = self._clock.time()

    async def _mark_sending(self, job: Job, unless_suppressed: str | None) -> bool | Suppression:
        """Record the attempt before the provider call; raises UnavailableError (and
        changes nothing) when the store cannot take it, so nothing is sent unrecorded.
        False when another daemon took the job over meanwhile: it is not sent here. The
        recipient's :class:`Suppression` (nothing recorded) when ``unless_suppressed``
        names a suppressed one."""
        record = job.record
        before = (record.status, record.attempts, record.updated_at)
        record.attempts += 1
        self._touch(job, TaskStatus.SENDING)
        try:
            started = await self.queue.start(job, unless_suppressed)
        except BaseException:
            record.status, record.attempts, record.updated_at = before
            raise
        if isinstance(started, Suppression):
            record.status, record.attempts, record.updated_at = before
        elif not started:
            log.info("task.taken_over", task_id=record.task_id)
        return started

    async def _until_saved(self, job: Job, write: Callable[[], Awaitable[None]]) -> None:
        """Write a status change that follows a provider call until the store takes it:
        the message went out (or failed for good), so the record must say so."""
        delay = 0.05
        warned = False
        while True:
            try:
                await write()
            except UnavailableError:
                if not warned:
                    log.warning(
                        "task.status_not_saved",
                        task_id=job.record.task_id,
                        status=job.record.status,
                        retry="until the store answers",
                    )
                    warned = True
            else:
                return
            await asyncio.sleep(delay)
            delay = min(_SAVE_RETRY_MAX, delay * 2)

    async def _persist(self, job: Job, write: Awaitable[None]) -> None:
        try:
            await write
        except UnavailableError:
            # the store said once that it is down; a traceback per task would add nothing
            log.warning(
                "task.status_not_saved", task_id=job.record.task_id, status=job.record.status
            )
        except Exception:
            # Delivery goes on even when the status write fails; the log keeps the trail.
            log.exception(
                "task.status_not_saved", task_id=job.record.task_id, status=job.record.status
            )

    async def _finish(
        self,
        job: Job,
        status: TaskStatus,
        error: str,
        provider: str | None = None,
        *,
        dead_letter: bool = False,
    ) -> None:
        await self._record_final(job, status, error, provider, release=True, dead=dead_letter)

    async def _record_final(
        self,
        job: Job,
        status: TaskStatus,
        error: str,
        provider: str | None = None,
        *,
        release: bool = False,
        dead: bool = False,
    ) -> None:
        if provider:
            job.record.provider = provider
        job.record.last_error = error
        self._touch(job, status)
        audit = self.audit
        event, fields = _final_fields(job, status, error)
        pending = None  # the record for the queue to keep with the status
        if release and audit is not None and self.queue.keeps_audit(job):
            pending = audit.draft(fields.get("user_id"), event, recipient=job.message.to, **fields)
        kept: AuditDraft | None = None
        if release:

            async def done() -> None:
                # the record rides the first write only: one that failed may have been
                # made, and a record twice is worse than the trail's own write below
                nonlocal pending, kept
                riding, pending = pending, None
                await self.queue.done(job, dead_letter=dead, audit=riding)
                kept = riding

            await self._until_saved(job, done)
        else:
            await self._persist(job, self.store.update_task(job.record))
        self._metrics.tasks.labels(job.record.channel.value, status.value).inc()
        if dead:
            self._metrics.dead_letters.labels(job.record.channel.value).inc()
        log.info(
            "task.finished",
            task_id=job.record.task_id,
            status=status.value,
            channel=job.record.channel.value,
            tag=job.record.tag,
            attempts=job.record.attempts,
            provider=job.record.provider,
            error=error or None,
        )
        if audit is not None:
            if kept is not None:
                audit.logged(event, masked=kept.record.get("recipient"), **fields)
            else:
                await audit.record(event, recipient=job.message.to, **fields)
        if status is TaskStatus.FAILED and self.failures is not None and job.record.otp_id:
            await self.failures.task_failed(replace(job.record))


def _final_fields(job: Job, status: TaskStatus, error: str) -> tuple[str, dict[str, str]]:
    """The event and fields of a delivery's final audit record (the recipient apart)."""
    record = job.record
    carried = dict(job.message.audit)
    fields = {
        "task_id": record.task_id,
        "channel": record.channel.value,
        "tag": record.tag,
        "attempts": str(record.attempts),
        **carried,
    }
    if status is TaskStatus.FAILED:
        # a provider's answer after the reason may quote the recipient: never kept
        kept = error if error.startswith("rate_limited:") else error.partition(":")[0]
        fields["reason"] = kept.strip() or "failed"
    if record.provider:
        fields["provider"] = record.provider
    return ("message_sent" if status is TaskStatus.SENT else "message_failed"), fields
