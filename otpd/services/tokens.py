"""Email verification and password reset links: issue, check and consume single-use tokens.

A token is ``<owner_ref>.<secret>``: ``owner_ref`` is a keyed hash of (purpose, user id)
that names the one record an owner may have live, and ``secret`` carries 32 random bytes.
The store keeps only an HMAC of the whole token, with the owner and audit fields, so:

- issuing a new token for the same owner overwrites the old one (it is superseded),
- checking or consuming a token is one store round trip, with no index to maintain,
- a token never appears in a log line, a metric or a task record: it lives only in the
  rendered message handed to the dispatcher.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import structlog

from otpd.clock import Clock
from otpd.config import LinksConfig, TokensConfig
from otpd.crypto import Hasher, new_id, new_token
from otpd.dispatch import Dispatcher
from otpd.errors import InvalidTokenError, RateLimitedError, UnavailableError, ValidationError
from otpd.metrics import Metrics
from otpd.models import Channel, Message
from otpd.store import Limit, LimitExceeded, Store, TokenCheck, TokenRecord
from otpd.templating import TemplateRenderer
from otpd.validation import (
    check_client_ip,
    check_display_name,
    check_locale,
    check_user_agent,
    check_user_id,
    normalize_email,
)

__all__ = [
    "HOSTED_VERIFY_PATH",
    "MAX_REMINDERS",
    "LinkIssued",
    "ReminderUser",
    "RemindersQueued",
    "Skipped",
    "TokenOwner",
    "TokenService",
]

log = structlog.get_logger("otpd.links")

HOUR = 3600
DAY = 86400
VERIFY = "email_verification"
RESET = "password_reset"
MAX_REMINDERS = 1000
# Where otpd serves its own confirmation page when ``links.hosted`` is on.
HOSTED_VERIFY_PATH = "/l/verify-email"

_OWNER_REF_HEX = 24  # 96 bits: collisions between owners are out of reach
_SECRET_BYTES = 32
# owner_ref, a dot, then secrets.token_urlsafe(32): 43 URL-safe characters
_TOKEN_RE = re.compile(rf"[0-9a-f]{{{_OWNER_REF_HEX}}}\.[A-Za-z0-9_\-]{{43}}")
_REMINDER_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class LinkIssued:
    """The answer to a link request; identical in shape whether or not it was sent."""

    task_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Whom a live token belongs to."""

    user_id: str
    email: str
    expires_at: float


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


@dataclass(frozen=True, slots=True)
class _Request:
    """One validated link request."""

    purpose: str
    template: str
    user_id: str
    email: str
    name: str | None
    locale: str | None
    client_ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class _Issued:
    """A rendered message and its token record; ``refused`` if a limit kept it unsent."""

    record: TokenRecord
    message: Message
    refused: LimitExceeded | None


class TokenService:
    """The email verification and password reset flows, with no token logic left to callers."""

    def __init__(
        self,
        links: LinksConfig,
        tokens: TokensConfig,
        *,
        store: Store,
        dispatcher: Dispatcher,
        renderer: TemplateRenderer,
        hasher: Hasher,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.links = links
        self.tokens = tokens
        self.store = store
        self.dispatcher = dispatcher
        self.renderer = renderer
        self.hasher = hasher
        self.clock = clock
        self.metrics = metrics

    # ------------------------------------------------------------------ tokens and links

    def _owner_ref(self, purpose: str, user_id: str) -> str:
        return self.hasher.digest("link-owner", purpose, user_id)[:_OWNER_REF_HEX]

    def _token_hash(self, purpose: str, token: str) -> str:
        return self.hasher.digest("link-token", purpose, token)

    def _key(self, purpose: str, owner_ref: str) -> str:
        return self.store.keys.token(owner_ref, purpose)

    @staticmethod
    def is_well_formed(token: str) -> bool:
        """Whether ``token`` has the shape of a token otpd issues (says nothing of its life)."""
        return _TOKEN_RE.fullmatch(token) is not None

    def link(self, purpose: str, token: str) -> str:
        """The URL mailed for ``token``: the caller's front end, or otpd's hosted page."""
        if purpose == VERIFY:
            path = HOSTED_VERIFY_PATH if self.links.hosted else self.links.verify_email_path
        else:
            path = self.links.reset_password_path
        sep = "&" if "?" in path else "?"
        return f"{self.links.base_url.rstrip('/')}{path}{sep}token={quote(token, safe='')}"

    # ------------------------------------------------------------------ limits

    def _verification_limits(self, user_id: str, client_ip: str | None) -> list[Limit]:
        keys = self.store.keys
        limits = [
            Limit(
                "user_day",
                keys.user_limit(user_id, VERIFY, DAY),
                self.tokens.verification_per_user_day,
                DAY,
            )
        ]
        if client_ip:
            limits.append(
                Limit(
                    "ip_hour",
                    keys.ip_limit(client_ip, VERIFY, HOUR),
                    self.tokens.verification_per_ip_hour,
                    HOUR,
                )
            )
        return limits

    def _reset_limits(self, email: str, client_ip: str | None) -> list[Limit]:
        keys = self.store.keys
        # keyed by a keyed hash of the address: addresses never appear in store keys
        addr = self.hasher.digest("link-email", email.lower())[:32]
        limits = [
            Limit(
                "email_hour",
                keys.address_limit(addr, RESET, HOUR),
                self.tokens.reset_per_email_hour,
                HOUR,
            )
        ]
        if client_ip:
            limits.append(
                Limit(
                    "ip_hour",
                    keys.ip_limit(client_ip, RESET, HOUR),
                    self.tokens.reset_per_ip_hour,
                    HOUR,
                )
            )
        return limits

    # ------------------------------------------------------------------ issuing

    def _validate(
        self,
        purpose: str,
        template: str,
        *,
        user_id: str,
        email: str,
        name: str | None,
        locale: str | None,
        client_ip: str | None,
        user_agent: str | None,
    ) -> _Request:
        return _Request(
            purpose=purpose,
            template=template,
            user_id=check_user_id(user_id),
            email=normalize_email(email),
            name=check_display_name(name),
            locale=check_locale(locale),
            client_ip=check_client_ip(client_ip),
            user_agent=check_user_agent(user_agent),
        )

    async def _issue(self, req: _Request, ttl: int, limits: Sequence[Limit]) -> _Issued:
        """Render the message and store the token unless a limit is full.

        Both outcomes do the same work up to the one store round trip (the message is
        rendered either way), so a refusal cannot be told apart by timing.
        """
        owner_ref = self._owner_ref(req.purpose, req.user_id)
        token = f"{owner_ref}.{new_token(_SECRET_BYTES)}"
        now = self.clock.time()
        ttl_minutes = max(1, ttl // 60)
        context = {
            "name": req.name or "",
            "link": self.link(req.purpose, token),
            "ttl_minutes": ttl_minutes,
            "client_ip": req.client_ip or "",
            "user_agent": req.user_agent or "",
        }
        rendered = await self.renderer.render_email(req.template, context, req.locale)
        message = Message(
            Channel.EMAIL, req.email, rendered.text, rendered.subject, rendered.html, req.template
        )
        record = TokenRecord(
            token_id=new_id("tok"),
            token_hash=self._token_hash(req.purpose, token),
            purpose=req.purpose,
            user_id=req.user_id,
            email=req.email,
            created_at=now,
            expires_at=now + ttl,
            client_ip=req.client_ip or "",
            user_agent=req.user_agent or "",
        )
        refused = await self.store.issue_token(
            self._key(req.purpose, owner_ref), record, limits, now
        )
        if refused is not None:
            self.metrics.rate_limited.labels(f"{req.purpose}_{refused.scope}").inc()
            log.info(
                f"audit.{req.purpose}_rate_limited",
                user_id=req.user_id,
                template=req.template,
                scope=refused.scope,
                client_ip=req.client_ip,
                user_agent=req.user_agent,
            )
        else:
            self.metrics.link_tokens_issued.labels(req.purpose).inc()
        return _Issued(record, message, refused)

    async def _send(self, issued: _Issued, req: _Request) -> LinkIssued:
        task = await self.dispatcher.enqueue(issued.message)
        log.info(
            f"audit.{req.purpose}_requested",
            token_id=issued.record.token_id,
            user_id=req.user_id,
            template=req.template,
            task_id=task.task_id,
            client_ip=req.client_ip,
            user_agent=req.user_agent,
        )
        return LinkIssued(task.task_id, issued.record.expires_at)

    async def request_verification(
        self,
        *,
        user_id: str,
        email: str,
        name: str | None = None,
        locale: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> LinkIssued:
        """Mail a verification link; any earlier verification link of the user stops working.

        Raises :class:`RateLimitedError` past ``tokens.verification_per_user_day`` or
        ``tokens.verification_per_ip_hour``.
        """
        req = self._validate(
            VERIFY,
            "email_verification",
            user_id=user_id,
            email=email,
            name=name,
            locale=locale,
            client_ip=client_ip,
            user_agent=user_agent,
        )
        limits = self._verification_limits(req.user_id, req.client_ip)
        issued = await self._issue(req, self.tokens.verification_ttl_seconds, limits)
        if issued.refused is not None:
            raise RateLimitedError(
                "too many verification emails requested; try again later",
                retry_after=max(1, math.ceil(issued.refused.retry_after)),
                scope=issued.refused.scope,
            )
        return await self._send(issued, req)

    async def request_password_reset(
        self,
        *,
        user_id: str,
        email: str,
        name: str | None = None,
        locale: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> LinkIssued:
        """Mail a password reset link; any earlier reset link of the user stops working.

        Past ``tokens.reset_per_email_hour`` or ``tokens.reset_per_ip_hour`` nothing is
        sent, yet the answer has the same shape (a task id, recorded as failed with
        ``rate_limited``, and an expiry) and takes the same time, so it reveals nothing.
        """
        req = self._validate(
            RESET,
            "password_reset",
            user_id=user_id,
            email=email,
            name=name,
            locale=locale,
            client_ip=client_ip,
            user_agent=user_agent,
        )
        limits = self._reset_limits(req.email, req.client_ip)
        issued = await self._issue(req, self.tokens.reset_ttl_seconds, limits)
        if issued.refused is not None:
            # Same work as a send: the message was rendered and one task is recorded.
            task = await self.dispatcher.reject(
                issued.message, f"rate_limited: {issued.refused.scope}"
            )
            return LinkIssued(task.task_id, issued.record.expires_at)
        return await self._send(issued, req)

    async def send_reminders(self, users: Sequence[ReminderUser]) -> RemindersQueued:
        """Mail fresh verification links (template ``verification_reminder``) to many users.

        Each user counts against the same per-user limit as a verification request; users
        that cannot be sent to are returned in ``skipped`` with a reason (``invalid``,
        ``duplicate``, ``rate_limited``, ``unavailable``).
        """
        if len(users) > MAX_REMINDERS:
            raise ValidationError.field("users", f"at most {MAX_REMINDERS} users per request")
        skipped: dict[int, Skipped] = {}
        todo: list[tuple[int, _Request]] = []
        seen: set[str] = set()
        for i, user in enumerate(users):
            try:
                req = self._validate(
                    VERIFY,
                    "verification_reminder",
                    user_id=user.user_id,
                    email=user.email,
                    name=user.name,
                    locale=None,
                    client_ip=None,
                    user_agent=None,
                )
            except ValidationError as exc:
                skipped[i] = Skipped(user.user_id[:128], f"invalid_{next(iter(exc.fields))}")
                continue
            if req.user_id in seen:
                skipped[i] = Skipped(req.user_id, "duplicate")
                continue
            seen.add(req.user_id)
            todo.append((i, req))

        async def remind(req: _Request) -> str | None:
            try:
                issued = await self._issue(
                    req,
                    self.tokens.verification_ttl_seconds,
                    self._verification_limits(req.user_id, None),
                )
                if issued.refused is not None:
                    return "rate_limited"
                await self._send(issued, req)
            except UnavailableError:
                return "unavailable"
            return None

        queued = 0
        for start in range(0, len(todo), _REMINDER_CONCURRENCY):
            batch = todo[start : start + _REMINDER_CONCURRENCY]
            reasons = await asyncio.gather(*(remind(req) for _, req in batch))
            for (i, req), reason in zip(batch, reasons, strict=True):
                if reason is None:
                    queued += 1
                else:
                    skipped[i] = Skipped(req.user_id, reason)
        log.info("audit.verification_reminders", queued=queued, skipped=len(skipped))
        return RemindersQueued(queued, tuple(skipped[i] for i in sorted(skipped)))

    # ------------------------------------------------------------------ checking

    async def _use(self, purpose: str, token: str, *, consume: bool) -> TokenOwner:
        action = "confirm" if consume else "check"
        if not self.is_well_formed(token):
            self.metrics.link_tokens_used.labels(purpose, action, "malformed").inc()
            log.info(f"audit.{purpose}_token_rejected", action=action, reason="malformed")
            raise InvalidTokenError()
        owner_ref = token.partition(".")[0]
        outcome = await self.store.use_token(
            self._key(purpose, owner_ref),
            self._token_hash(purpose, token),
            purpose,
            self.clock.time(),
            consume=consume,
        )
        self.metrics.link_tokens_used.labels(purpose, action, outcome.check.value).inc()
        if outcome.check is not TokenCheck.OK or outcome.record is None:
            # The reason is for the audit trail only: callers get one answer for all.
            log.info(
                f"audit.{purpose}_token_rejected",
                action=action,
                reason=outcome.check.value,
                user_id=outcome.user_id or None,
            )
            raise InvalidTokenError()
        rec = outcome.record
        log.info(
            f"audit.{purpose}_token_{'confirmed' if consume else 'checked'}",
            token_id=rec.token_id,
            user_id=rec.user_id,
        )
        return TokenOwner(rec.user_id, rec.email, rec.expires_at)

    async def confirm_verification(self, token: str) -> TokenOwner:
        """Consume a verification token; :class:`InvalidTokenError` unless it is live."""
        return await self._use(VERIFY, token, consume=True)

    async def check_password_reset(self, token: str) -> TokenOwner:
        """Whether a reset token is live, without consuming it."""
        return await self._use(RESET, token, consume=False)

    async def confirm_password_reset(self, token: str) -> TokenOwner:
        """Consume a reset token; of two concurrent confirms at most one succeeds."""
        return await self._use(RESET, token, consume=True)
