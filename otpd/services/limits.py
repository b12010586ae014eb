"""Every rate limit otpd counts, and what a refusal by each of them means for the caller.

Services ask this module for their :class:`~otpd.store.Limit` lists and hand a refusal
back to :meth:`LimitPolicy.error`; no other module builds a limit or rounds a retry-after.
Addresses and numbers are counted under keyed hashes, never as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from otpd.config import Config
from otpd.crypto import Hasher
from otpd.errors import RateLimitedError, SmsBlockedError
from otpd.metrics import Metrics
from otpd.models import Channel, Message
from otpd.store import Bucket, Limit, LimitExceeded, Store

__all__ = [
    "DAY",
    "HOUR",
    "SMS_GUARD_SCOPES",
    "LimitPolicy",
    "RefusalRecorder",
    "SendingLimits",
    "retry_after",
]

HOUR = 3600
DAY = 86400

# The SMS guard's store-backed rules: a refusal by one of these is ``sms_blocked``, with
# the scope as its reason.
_SMS_GUARD_MESSAGES = {
    "prefix_velocity": "too many different numbers of this range were sent SMS recently",
    "country_hourly_cap": "too many SMS were sent recently; try again later",
    "country_daily_cap": "too many SMS were sent recently; try again later",
    "global_hourly_cap": "too many SMS were sent recently; try again later",
    "global_daily_cap": "too many SMS were sent recently; try again later",
}
SMS_GUARD_SCOPES = frozenset(_SMS_GUARD_MESSAGES)

VERIFY = "email_verification"
RESET = "password_reset"


def retry_after(seconds: float) -> int:
    """Whole seconds for a ``Retry-After`` header: rounded up, at least 1."""
    return max(1, math.ceil(seconds))


class RefusalRecorder(Protocol):
    """Told of every message a limit kept from being sent. Dev only: the dev outbox keeps
    a trace, so that reading it shows the refusal rather than an older message."""

    def refused(self, message: Message, reason: str) -> None:
        """``reason`` reads like a task's ``last_error``: ``rate_limited: email_hour``."""


class LimitPolicy:
    """Builds the limits of every operation from the configuration."""

    def __init__(
        self,
        config: Config,
        hasher: Hasher,
        metrics: Metrics,
        *,
        refusals: RefusalRecorder | None = None,
    ) -> None:
        self.config = config
        self.hasher = hasher
        self.metrics = metrics
        self.refusals = refusals

    def _address(self, domain: str, *parts: str) -> str:
        return self.hasher.digest(domain, *parts)[:32]

    # ---------------------------------------------------------------- one-time codes

    def otp(self, user_id: str, client_ip: str | None) -> list[Limit]:
        cfg = self.config.otp
        limits = [
            Limit("user_hour", Bucket.user(user_id, "otp"), cfg.per_user_hour, HOUR),
            Limit("user_day", Bucket.user(user_id, "otp"), cfg.per_user_day, DAY),
        ]
        if client_ip:
            limits.append(Limit("ip_hour", Bucket.ip(client_ip, "otp"), cfg.per_ip_hour, HOUR))
        return limits

    # ---------------------------------------------------------------- links

    def verification(self, user_id: str, client_ip: str | None) -> list[Limit]:
        cfg = self.config.tokens
        limits = [
            Limit("user_day", Bucket.user(user_id, VERIFY), cfg.verification_per_user_day, DAY)
        ]
        if client_ip:
            limits.append(
                Limit("ip_hour", Bucket.ip(client_ip, VERIFY), cfg.verification_per_ip_hour, HOUR)
            )
        return limits

    def reset(self, email: str, client_ip: str | None) -> list[Limit]:
        cfg = self.config.tokens
        addr = self._address("link-email", email.lower())
        limits = [Limit("email_hour", Bucket.address(addr, RESET), cfg.reset_per_email_hour, HOUR)]
        if client_ip:
            limits.append(
                Limit("ip_hour", Bucket.ip(client_ip, RESET), cfg.reset_per_ip_hour, HOUR)
            )
        return limits

    # ---------------------------------------------------------------- sending

    def sending(self, message: Message) -> list[Limit]:
        """Email: ``email.per_recipient_hour`` and ``email.global_hour``; SMS:
        ``sms.per_recipient_hour`` (the SMS guard owns the SMS-wide caps)."""
        channel = message.channel.value
        addr = self._address("recipient", channel, message.to.lower())
        email, sms = self.config.email, self.config.sms
        per_recipient = (
            email.per_recipient_hour if message.channel is Channel.EMAIL else sms.per_recipient_hour
        )
        limits = [
            Limit(
                f"{channel}_recipient_hour",
                Bucket.address(addr, f"{channel}_send"),
                per_recipient,
                HOUR,
            )
        ]
        if message.channel is Channel.EMAIL:
            limits.append(
                Limit("email_global_hour", Bucket.shared("email_send"), email.global_hour, HOUR)
            )
        return limits

    # ---------------------------------------------------------------- the SMS guard

    def sms_guard(self, country: str, range_hash: str, number_hash: str) -> list[Limit]:
        """Range velocity (distinct numbers: the member is the hashed number, so the same
        number again is not a new one) and the country and global caps (they count SMS,
        taking the call's member, unique per SMS)."""
        cfg = self.config.sms
        window = cfg.prefix_window_seconds
        country_bucket = Bucket.shared(f"sms_guard:{country}")
        everyone = Bucket.shared("sms_guard")
        return [
            Limit(
                "prefix_velocity",
                Bucket.address(range_hash, "sms_range"),
                cfg.prefix_max_numbers,
                window,
                distinct=True,
                member=number_hash,
            ),
            Limit("country_hourly_cap", country_bucket, cfg.country_hour, HOUR),
            Limit("country_daily_cap", country_bucket, cfg.country_day, DAY),
            Limit("global_hourly_cap", everyone, cfg.global_hour, HOUR),
            Limit("global_daily_cap", everyone, cfg.global_day, DAY),
        ]

    # ---------------------------------------------------------------- refusals

    def count(self, refused: LimitExceeded, action: str) -> None:
        """Count a refusal of ``action`` (``otp``, ``password_reset``) in the metrics."""
        if refused.scope in SMS_GUARD_SCOPES:
            self.metrics.sms_blocked.labels(refused.scope).inc()
        else:
            self.metrics.rate_limited.labels(f"{action}_{refused.scope}").inc()

    def error(
        self, refused: LimitExceeded, action: str, message: str, *, count: bool = True
    ) -> RateLimitedError:
        """The error for a refusal of ``action``: ``sms_blocked`` for the SMS guard's rules
        (with the rule as its reason), else ``rate_limited`` with ``message``. Counted in
        the metrics unless the caller did so already (``count=False``)."""
        if count:
            self.count(refused, action)
        after = retry_after(refused.retry_after)
        if refused.scope in SMS_GUARD_SCOPES:
            return SmsBlockedError(
                _SMS_GUARD_MESSAGES[refused.scope], reason=refused.scope, retry_after=after
            )
        return RateLimitedError(message, retry_after=after, scope=refused.scope)

    def record_refusal(
        self, messages: Iterable[Message], refused: LimitExceeded | RateLimitedError
    ) -> None:
        """Tell the refusal recorder, if there is one (dev), that ``messages`` were not
        sent because of ``refused``."""
        if self.refusals is None:
            return
        if isinstance(refused, RateLimitedError):
            reason = f"{refused.code}: {refused.details.get('reason') or refused.scope}"
        elif refused.scope in SMS_GUARD_SCOPES:
            reason = f"sms_blocked: {refused.scope}"
        else:
            reason = f"rate_limited: {refused.scope}"
        for message in messages:
            self.refusals.refused(message, reason)


class SendingLimits:
    """The dispatcher's admission: counts a message's sending limits in the store, so
    they hold across daemon instances."""

    def __init__(self, policy: LimitPolicy, store: Store) -> None:
        self.policy = policy
        self.store = store

    async def admit(self, message: Message, member: str, now: float) -> LimitExceeded | None:
        refused = await self.store.hit_limits(self.policy.sending(message), member, now)
        if refused is not None:
            self.policy.record_refusal([message], refused)
        return refused
