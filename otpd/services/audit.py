"""The audit trail: every security event as one structured record, in the store (for
``GET /v1/audit``) and as its ``audit.<event>`` log line.

A record names who and from where (user, client IP, user agent, the API key's name), what
(the event, the OTP or task it concerns, why it was refused) and to whom, masked
(``j***@example.com``, ``+1******2671``); never a code, a token or a full address. The log
line is written first, so a record the store cannot take is still in the log: a store
failure never fails the request, it is reported once per outage (``audit.store_failed``,
then ``audit.store_restored`` with how many records only the log holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import structlog

from otpd.clock import Clock, rfc3339
from otpd.config import AuditConfig
from otpd.errors import ValidationError
from otpd.redaction import SECRET_KEYS, mask_email, mask_phone
from otpd.store import Store
from otpd.store.base import AUDIT_MAX_LIMIT, AuditDraft, AuditEntry, AuditPage, parse_audit_id
from otpd.validation import check_user_id

__all__ = ["AUDIT_EVENTS", "AuditTrail", "mask_recipient", "parse_rfc3339"]

log = structlog.get_logger("otpd.audit")

AUDIT_EVENTS = frozenset(
    {
        "otp_issued",
        "otp_verified",
        "otp_failed",
        "otp_rate_limited",
        "otp_fallback",
        "sms_blocked",
        "sms_range_blocked",
        "sms_block_lifted",
        "link_issued",
        "link_checked",
        "link_confirmed",
        "link_invalid",
        "link_rate_limited",
        "password_reset_confirmed",
        "message_sent",
        "message_failed",
        "message_delivered",
        "message_bounced",
        "message_complained",
        "message_undelivered",
        "recipient_suppressed",
        "suppression_removed",
        "api_unauthorized",
        "totp_enrollment_started",
        "totp_enabled",
        "totp_verified",
        "totp_failed",
        "totp_rate_limited",
        "totp_disabled",
        "recovery_code_used",
        "recovery_codes_regenerated",
    }
)
"""Every event the trail records (what ``GET /v1/audit?event=`` accepts)."""

DEFAULT_LIMIT = 100
_MAX_VALUE = 512  # a stored field longer than this is cut (a user agent, a provider's reason)

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(value: str, name: str) -> float:
    """A UNIX time from an RFC 3339 date-time with a zone (``2026-12-02T05:00:00Z``)."""
    if _RFC3339.fullmatch(value) is None:
        raise ValidationError.field(
            name, "must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z"
        )
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValidationError.field(name, "not a valid date-time") from None


def mask_recipient(address: str) -> str:
    """An email address or phone number as the trail shows it."""
    return mask_email(address) if "@" in address else mask_phone(address)


def _text(value: Any) -> str:
    if type(value) is str:  # nearly every field: no conversion
        return value if len(value) <= _MAX_VALUE else value[:_MAX_VALUE]
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    return text[:_MAX_VALUE]


_BATCH = 256  # records written in one round trip at most


class AuditTrail:
    """Records security events (:meth:`record`) and reads them back (:meth:`events`).

    Opened (``async with``), it keeps records in the store from a background task, in
    batches of one round trip, so that a request does not wait for its audit write: under
    load, one pipeline carries the records of every request answered since the last one.
    A process that crashes loses at most the records of that moment from the store; each
    is in its ``audit.*`` log line, written before the request is answered. Not opened, it
    writes each record before returning.
    """

    def __init__(self, config: AuditConfig, store: Store, *, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self._failing = False
        self._lost = 0
        self._pending: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self._writer is not None:
            raise RuntimeError("the audit trail is already open")
        self._writer = asyncio.create_task(self._write_batches(), name="otpd-audit-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.flush()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._pending:  # the store failed at the end: the log lines hold them
            self._lost += len(self._pending)
            self._pending.clear()

    async def flush(self) -> None:
        """Wait until every record so far is in the store (or reported as lost)."""
        if self._writer is not None and not self._writer.done():
            await self._idle.wait()

    async def _write_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:_BATCH]
                del self._pending[:_BATCH]
                await self._keep(batch)
            self._idle.set()

    def context(self, **fields: Any) -> tuple[tuple[str, str], ...]:
        """What a message carries for the record of its delivery (``Message.audit``),
        the API key's name of the current request included."""
        client = structlog.contextvars.get_contextvars().get("client")
        if client and "api_client" not in fields:
            fields["api_client"] = client
        return tuple(
            (k, _text(v)) for k, v in fields.items() if v not in (None, "") and k not in SECRET_KEYS
        )

    async def record(
        self,
        event: str,
        *,
        log_as: str | None = None,
        recipient: str | Sequence[str] | None = None,
        **fields: Any,
    ) -> None:
        """Log ``audit.<log_as or event>`` with ``fields`` and keep the record in the
        store. ``recipient`` is the address or addresses in clear: masked here, once for
        every caller. Never raises for the store."""
        now = self.clock.time()
        record = self._record(now, recipient, fields, event)
        self.logged(event, log_as=log_as, masked=record.get("recipient"), **fields)
        if not self.config.enabled:
            return
        user_id = fields.get("user_id") or None
        entry: AuditEntry = (record, str(user_id) if user_id else None, now)
        if self._writer is None or self._writer.done():
            await self._keep([entry])
            return
        self._pending.append(entry)
        self._idle.clear()
        self._wake.set()

    def draft(
        self,
        user_id: str | None,
        event: str | None = None,
        /,
        *,
        recipient: str | Sequence[str] | None = None,
        **fields: Any,
    ) -> AuditDraft | None:
        """The record of ``user_id``'s event for the store to keep in the step that decides
        it: a verify, whose outcome the store adds (``Store.verify_otp(audit=...)``), or an
        issue, whose record is whole (``event``) and kept only if the code is stored
        (``Store.issue_otp(audit=...)``). ``user_id`` leads the fields unless they name it
        elsewhere. None when the trail keeps nothing. Its log line is :meth:`logged`."""
        if not self.config.enabled:
            return None
        now = self.clock.time()
        named = fields if "user_id" in fields or user_id is None else {"user_id": user_id, **fields}
        record = self._record(now, recipient, named, event)
        return AuditDraft(record, user_id, now, self.config.retention_ms)

    def logged(
        self, event: str, *, log_as: str | None = None, masked: str | None = None, **fields: Any
    ) -> None:
        """The ``audit.<log_as or event>`` line alone (the record is kept elsewhere), with
        ``masked`` as its recipient."""
        logged = {k: v for k, v in fields.items() if k not in SECRET_KEYS}
        if masked:
            logged["recipient"] = masked
        log.info(f"audit.{log_as or event}", **logged)

    def _record(
        self,
        now: float,
        recipient: str | Sequence[str] | None,
        fields: dict[str, Any],
        event: str | None,
    ) -> dict[str, str]:
        record: dict[str, str] = {"event": event} if event else {}
        record["at"] = rfc3339(now)
        if "api_client" not in fields:
            client = structlog.contextvars.get_contextvars().get("client")
            if client:
                record["api_client"] = _text(client)
        if recipient:
            shown = [recipient] if isinstance(recipient, str) else list(recipient)
            record["recipient"] = ", ".join(mask_recipient(r) for r in shown)
        for key, value in fields.items():
            if value is None or value == "" or key in SECRET_KEYS:
                continue
            record[key] = _text(value)
        return record

    async def _keep(self, entries: list[AuditEntry]) -> None:
        """Write ``entries`` to the store; a failure is reported, never raised."""
        try:
            await self.store.append_audits(entries, self.config.retention_ms)
        except Exception as exc:
            # the log lines hold the records; the requests go on
            self._lost += len(entries)
            if not self._failing:
                self._failing = True
                log.warning(
                    "audit.store_failed",
                    audit_event=entries[0][0].get("event"),
                    error=type(exc).__name__,
                    hint="audit records are only in the audit.* log lines until the store answers",
                )
            return
        if self._failing:
            self._failing = False
            log.warning("audit.store_restored", only_logged=self._lost)
            self._lost = 0

    async def events(
        self,
        *,
        user_id: str | None = None,
        event: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> AuditPage:
        """The records of ``user_id`` (without one: the events that name no user, such as
        refused API keys) newest first; ``since`` and ``until`` are RFC 3339 date-times,
        ``cursor`` the ``next_cursor`` of the page before."""
        if user_id is not None:
            check_user_id(user_id)
        if event is not None and event not in AUDIT_EVENTS:
            raise ValidationError.field("event", "not an audit event")
        if not 1 <= limit <= AUDIT_MAX_LIMIT:
            raise ValidationError.field("limit", f"must be 1 to {AUDIT_MAX_LIMIT}")
        if cursor is not None and parse_audit_id(cursor) is None:
            raise ValidationError.field("cursor", "not a cursor of this query")
        await self.flush()  # this process's records so far are in what is read
        start = parse_rfc3339(since, "since") if since is not None else None
        end = parse_rfc3339(until, "until") if until is not None else None
        if start is not None and end is not None and start > end:
            raise ValidationError.field("until", "must not be before since")
        events, next_cursor = await self.store.audit_events(
            user_id, event, start, end, limit, cursor
        )
        return [_presented(e) for e in events], next_cursor


_LEAD = ("id", "event", "at")


def _presented(record: dict[str, str]) -> dict[str, str]:
    """``record`` with its id, event and time first, whatever order its store kept (a
    verify's outcome fields are added by the store, after what was known before it)."""
    shown = {key: record[key] for key in _LEAD if key in record}
    shown.update(record)
    return shown
