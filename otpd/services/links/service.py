"""Email verification and password reset links: issue, check and consume single-use tokens.

Issuing a new token for the same owner overwrites the old one (it is superseded); checking
or consuming a token is one store round trip, with no index to maintain. The token lives
only in the rendered message handed to the dispatcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from otpd.config import LinksConfig, TokensConfig
from otpd.crypto import new_id
from otpd.errors import InvalidTokenError
from otpd.models import Channel, Message
from otpd.sealing import SealError
from otpd.services.deps import ServiceDeps
from otpd.services.links.tokens import LinkTokens
from otpd.services.links.urls import RESET, VERIFY, LinkUrls
from otpd.store import Limit, LimitExceeded, TokenCheck, TokenRecord
from otpd.validation import (
    check_client_ip,
    check_display_name,
    check_locale,
    check_user_agent,
    check_user_id,
    normalize_email,
)

__all__ = ["LinkIssued", "LinkRequest", "LinkService", "TokenOwner"]

log = structlog.get_logger("otpd.links")


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
class LinkRequest:
    """One validated link request."""

    purpose: str
    template: str
    user_id: str
    email: str
    name: str | None
    locale: str | None
    client_ip: str | None
    user_agent: str | None

    @classmethod
    def checked(
        cls,
        purpose: str,
        template: str,
        *,
        user_id: str,
        email: str,
        name: str | None = None,
        locale: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> LinkRequest:
        return cls(
            purpose=purpose,
            template=template,
            user_id=check_user_id(user_id),
            email=normalize_email(email),
            name=check_display_name(name),
            locale=check_locale(locale),
            client_ip=check_client_ip(client_ip),
            user_agent=check_user_agent(user_agent),
        )


@dataclass(frozen=True, slots=True)
class Prepared:
    """A rendered message and its token record; ``refused`` if a limit kept it unsent."""

    record: TokenRecord
    message: Message
    refused: LimitExceeded | None


class LinkService:
    """The email verification and password reset flows, with no token logic left to callers."""

    def __init__(self, links: LinksConfig, tokens: TokensConfig, deps: ServiceDeps) -> None:
        self.config = tokens
        self.deps = deps
        self.tokens = LinkTokens(deps.hasher)
        self.urls = LinkUrls(links)

    def is_well_formed(self, token: str) -> bool:
        return self.tokens.is_well_formed(token)

    # ------------------------------------------------------------------ issuing

    async def prepare(self, req: LinkRequest, ttl: int, limits: Sequence[Limit]) -> Prepared:
        """Render the message and store the token unless a limit is full.

        Both outcomes do the same work up to the one store round trip (the message is
        rendered either way), so a refusal cannot be told apart by timing.
        """
        deps = self.deps
        if deps.suppressions is not None:
            await deps.suppressions.check({"email": req.email})
        owner_ref = self.tokens.owner_ref(req.purpose, req.user_id)
        token = self.tokens.new(owner_ref)
        now = deps.clock.time()
        context = {
            "name": req.name or "",
            "link": self.urls.link(req.purpose, token),
            "ttl_minutes": max(1, ttl // 60),
            "client_ip": req.client_ip or "",
            "user_agent": req.user_agent or "",
        }
        rendered = await deps.renderer.render_email(req.template, context, req.locale)
        message = Message(
            Channel.EMAIL,
            req.email,
            rendered.text,
            rendered.subject,
            rendered.html,
            req.template,
            expires_at=now + ttl,
            audit=deps.audit.context(
                user_id=req.user_id,
                purpose=req.purpose,
                client_ip=req.client_ip,
                user_agent=req.user_agent,
            ),
        )
        token_id = new_id("tok")
        record = TokenRecord(
            token_id=token_id,
            token_hash=self.tokens.hash(req.purpose, token),
            purpose=req.purpose,
            user_id=req.user_id,
            # the address is kept sealed: a Redis dump shows no one's email
            email=deps.keyring.seal(req.email.encode(), f"token:{token_id}"),
            created_at=now,
            expires_at=now + ttl,
            client_ip=req.client_ip or "",
            user_agent=req.user_agent or "",
        )
        refused = await deps.store.issue_token(owner_ref, record, limits, now)
        if refused is not None:
            deps.limits.count(refused, req.purpose)
            deps.limits.record_refusal([message], refused)
            await deps.audit.record(
                "link_rate_limited",
                log_as=f"{req.purpose}_rate_limited",
                user_id=req.user_id,
                purpose=req.purpose,
                template=req.template,
                channel=Channel.EMAIL.value,
                recipient=req.email,
                reason=refused.scope,
                scope=refused.scope,
                client_ip=req.client_ip,
                user_agent=req.user_agent,
            )
        else:
            deps.metrics.link_tokens_issued.labels(req.purpose).inc()
        return Prepared(record, message, refused)

    async def send(self, prepared: Prepared, req: LinkRequest) -> LinkIssued:
        task = await self.deps.dispatcher.enqueue(prepared.message)
        await self.deps.audit.record(
            "link_issued",
            log_as=f"{req.purpose}_requested",
            token_id=prepared.record.token_id,
            user_id=req.user_id,
            purpose=req.purpose,
            template=req.template,
            channel=Channel.EMAIL.value,
            recipient=req.email,
            task_id=task.task_id,
            client_ip=req.client_ip,
            user_agent=req.user_agent,
        )
        return LinkIssued(task.task_id, prepared.record.expires_at)

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
        req = LinkRequest.checked(
            VERIFY,
            "email_verification",
            user_id=user_id,
            email=email,
            name=name,
            locale=locale,
            client_ip=client_ip,
            user_agent=user_agent,
        )
        policy = self.deps.limits
        limits = policy.verification(req.user_id, req.client_ip)
        prepared = await self.prepare(req, self.config.verification_ttl_seconds, limits)
        if prepared.refused is not None:
            raise policy.error(
                prepared.refused,
                VERIFY,
                "too many verification emails requested; try again later",
                count=False,
            )
        return await self.send(prepared, req)

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
        req = LinkRequest.checked(
            RESET,
            "password_reset",
            user_id=user_id,
            email=email,
            name=name,
            locale=locale,
            client_ip=client_ip,
            user_agent=user_agent,
        )
        limits = self.deps.limits.reset(req.email, req.client_ip)
        prepared = await self.prepare(req, self.config.reset_ttl_seconds, limits)
        if prepared.refused is not None:
            # Same work as a send: the message was rendered and one task is recorded.
            task = await self.deps.dispatcher.reject(
                prepared.message, f"rate_limited: {prepared.refused.scope}"
            )
            return LinkIssued(task.task_id, prepared.record.expires_at)
        return await self.send(prepared, req)

    # ------------------------------------------------------------------ checking

    async def _use(self, purpose: str, token: str, *, consume: bool) -> TokenOwner:
        deps = self.deps
        action = "confirm" if consume else "check"
        if not self.tokens.is_well_formed(token):
            deps.metrics.link_tokens_used.labels(purpose, action, "malformed").inc()
            await deps.audit.record(
                "link_invalid",
                log_as=f"{purpose}_token_rejected",
                purpose=purpose,
                action=action,
                reason="malformed",
            )
            raise InvalidTokenError()
        outcome = await deps.store.use_token(
            self.tokens.owner_of(token),
            purpose,
            self.tokens.hash(purpose, token),
            deps.clock.time(),
            consume=consume,
        )
        deps.metrics.link_tokens_used.labels(purpose, action, outcome.check.value).inc()
        if outcome.check is not TokenCheck.OK or outcome.record is None:
            # The reason is for the audit trail only: callers get one answer for all.
            await deps.audit.record(
                "link_invalid",
                log_as=f"{purpose}_token_rejected",
                purpose=purpose,
                action=action,
                reason=outcome.check.value,
                user_id=outcome.user_id or None,
            )
            raise InvalidTokenError()
        rec = outcome.record
        if not consume:
            event = "link_checked"
        elif purpose == RESET:
            event = "password_reset_confirmed"
        else:
            event = "link_confirmed"
        await deps.audit.record(
            event,
            log_as=f"{purpose}_token_{'confirmed' if consume else 'checked'}",
            token_id=rec.token_id,
            user_id=rec.user_id,
            purpose=purpose,
            action=action,
        )
        return TokenOwner(rec.user_id, self._email_of(rec), rec.expires_at)

    def _email_of(self, record: TokenRecord) -> str:
        try:
            return self.deps.keyring.open(record.email, f"token:{record.token_id}").decode()
        except SealError:
            if "@" in record.email:
                return record.email  # stored by a release that kept it in clear
            log.warning("link.token_unreadable", token_id=record.token_id)
            raise InvalidTokenError() from None

    async def confirm_verification(self, token: str) -> TokenOwner:
        """Consume a verification token; :class:`InvalidTokenError` unless it is live."""
        return await self._use(VERIFY, token, consume=True)

    async def check_password_reset(self, token: str) -> TokenOwner:
        """Whether a reset token is live, without consuming it."""
        return await self._use(RESET, token, consume=False)

    async def confirm_password_reset(self, token: str) -> TokenOwner:
        """Consume a reset token; of two concurrent confirms at most one succeeds."""
        return await self._use(RESET, token, consume=True)
