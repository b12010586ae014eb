"""The verification-reminder batch: fresh verification links for many users at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from otpd.errors import UnavailableError, ValidationError
from otpd.services.links.service import LinkRequest, LinkService
from otpd.services.links.urls import VERIFY

__all__ = ["MAX_REMINDERS", "ReminderUser", "Reminders", "RemindersQueued", "Skipped"]

log = structlog.get_logger("otpd.links")

MAX_REMINDERS = 1000
_CONCURRENCY = 8  # reminders in flight at once: overlaps store round trips, bounds a loop turn


@dataclass(frozen=True, slots=True)
class ReminderUser:
    user_id: str
    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    user_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RemindersQueued:
    queued: int
    skipped: tuple[Skipped, ...]


class Reminders:
    """Sends through :class:`LinkService`, so each reminder counts against the same
    per-user limit as a verification request and supersedes the user's earlier link."""

    def __init__(self, links: LinkService) -> None:
        self.links = links

    async def send(self, users: Sequence[ReminderUser]) -> RemindersQueued:
        """Mail fresh verification links (template ``verification_reminder``).

        Users that cannot be sent to are returned in ``skipped`` with a reason
        (``invalid_<field>``, ``duplicate``, ``rate_limited``, ``unavailable``).
        """
        if len(users) > MAX_REMINDERS:
            raise ValidationError.field("users", f"at most {MAX_REMINDERS} users per request")
        skipped: dict[int, Skipped] = {}
        todo: list[tuple[int, LinkRequest]] = []
        seen: set[str] = set()
        for i, user in enumerate(users):
            if i % _CONCURRENCY == 0:
                await asyncio.sleep(0)  # a long batch must not hold the event loop
            try:
                req = LinkRequest.checked(
                    VERIFY,
                    "verification_reminder",
                    user_id=user.user_id,
                    email=user.email,
                    name=user.name,
                )
            except ValidationError as exc:
                skipped[i] = Skipped(user.user_id[:128], f"invalid_{next(iter(exc.fields))}")
                continue
            if req.user_id in seen:
                skipped[i] = Skipped(req.user_id, "duplicate")
                continue
            seen.add(req.user_id)
            todo.append((i, req))

        queued = 0
        for start in range(0, len(todo), _CONCURRENCY):
            batch = todo[start : start + _CONCURRENCY]
            reasons = await asyncio.gather(*(self._remind(req) for _, req in batch))
            for (i, req), reason in zip(batch, reasons, strict=True):
                if reason is None:
                    queued += 1
                else:
                    skipped[i] = Skipped(req.user_id, reason)
        log.info("audit.verification_reminders", queued=queued, skipped=len(skipped))
        return RemindersQueued(queued, tuple(skipped[i] for i in sorted(skipped)))

    async def _remind(self, req: LinkRequest) -> str | None:
        links = self.links
        # Rendering and hashing never wait on anything with the memory store: give the loop
        # a turn per reminder, so /healthz and other requests go on during a batch.
        await asyncio.sleep(0)
        try:
            limits = links.deps.limits.verification(req.user_id, None)
            prepared = await links.prepare(req, links.config.verification_ttl_seconds, limits)
            if prepared.refused is not None:
                return "rate_limited"
            await links.send(prepared, req)
        except UnavailableError:
            return "unavailable"
        return None
