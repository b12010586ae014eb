"""The SMS pumping fraud and cost guard: decides whether one more SMS may be sent.

Bots that request codes to premium-rate numbers turn every SMS into revenue for the
attacker and a bill for us. The guard refuses such traffic before a code is stored or a
message is queued, with rules checked cheapest first:

1. ``allowed_countries`` and ``blocked_prefixes``: static, no store round trip;
2. prefix velocity (at most ``prefix_max_numbers`` different numbers of one number range,
   the first ``prefix_digits`` digits, within ``prefix_window_seconds``) together with the
   per-country and global caps per hour and per day: sliding windows in the store, all
   counted or none in one call;
3. the daily budget: estimated spend per UTC day, in the store.

Every refusal increments ``otpd_sms_blocked_total{reason}``. Numbers reach the store only
as keyed hashes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import phonenumbers
import structlog

from otpd.clock import Clock
from otpd.config import SmsConfig
from otpd.crypto import Hasher, new_id
from otpd.errors import SmsBlockedError, ValidationError
from otpd.metrics import Metrics
from otpd.redaction import mask_phone
from otpd.store import Limit, LimitExceeded, Store
from otpd.validation import e164, parse_phone

__all__ = ["Charge", "SmsGuard", "SmsTarget"]

log = structlog.get_logger("otpd.sms_guard")

HOUR = 3600
DAY = 86400
# Money is counted in millionths of the currency unit: integer sums are exact, so a budget
# of 1.00 holds exactly twenty SMS at 0.05 (float sums would refuse the twentieth).
MICROS = 1_000_000
# The spend counter of a day outlives that day, so a restart near midnight still sees it.
BUDGET_TTL = 2 * DAY


def _micros(amount: float) -> int:
    return round(amount * MICROS)


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


_MESSAGES = {
    "prefix_velocity": "too many different numbers of this range were sent SMS recently",
    "country_hourly_cap": "too many SMS were sent recently; try again later",
    "country_daily_cap": "too many SMS were sent recently; try again later",
    "global_hourly_cap": "too many SMS were sent recently; try again later",
    "global_daily_cap": "too many SMS were sent recently; try again later",
}


@dataclass(frozen=True, slots=True)
class Charge:
    """Money added to a day's spend counter, in millionths."""

    key: str
    micros: int


@dataclass(frozen=True, slots=True)
class SmsTarget:
    """One destination number as the rules see it."""

    e164: str
    country: str
    """ISO 3166-1 alpha-2 region (``"001"`` for non-geographic numbers)."""
    number_hash: str
    range_hash: str
    """Keyed hash of the number range: the first ``prefix_digits`` digits after ``+``."""


class SmsGuard:
    """Refuses SMS that the fraud rules or the cost budget do not allow; see the module."""

    def __init__(
        self,
        config: SmsConfig,
        *,
        store: Store,
        hasher: Hasher,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.store = store
        self.hasher = hasher
        self.clock = clock
        self.metrics = metrics

    async def admit(self, phone_e164: str) -> None:
        """Return if one SMS to ``phone_e164`` may be sent, and count it; raise otherwise.

        Raises :class:`ValidationError` (422) for a country outside ``allowed_countries``
        and :class:`SmsBlockedError` (429, ``details.reason``) for every other refusal.
        Two round trips at most: the caps and the range velocity in one all-or-nothing
        call, then the budget. (An OTP request instead puts :meth:`limits` into its own
        issue script, so the SMS counters cost it no round trip of their own.)
        """
        target = self.target(phone_e164)
        self.check_static(target)
        refused = await self.store.hit_limits(self.limits(target), new_id("sms"), self.clock.time())
        if refused is not None:
            raise self.blocked(refused)
        await self.charge_budget(target)

    def owns(self, refused: LimitExceeded) -> bool:
        """Whether a refusal came from one of :meth:`limits` (and so means ``sms_blocked``)."""
        return refused.scope in _MESSAGES

    def blocked(self, refused: LimitExceeded) -> SmsBlockedError:
        """The error for a refusal by one of :meth:`limits`, counted in the metrics."""
        self.metrics.sms_blocked.labels(refused.scope).inc()
        return SmsBlockedError(
            _MESSAGES[refused.scope],
            reason=refused.scope,
            retry_after=_retry_after(refused.retry_after),
        )

    def target(self, phone: str | phonenumbers.PhoneNumber) -> SmsTarget:
        """The rules' view of a number; pass the parsed number when you have it (parsing
        costs tens of microseconds)."""
        number = phone if isinstance(phone, phonenumbers.PhoneNumber) else parse_phone(phone)
        formatted = e164(number)
        digits = formatted[1:]
        return SmsTarget(
            e164=formatted,
            country=phonenumbers.region_code_for_number(number) or "ZZ",
            number_hash=self.hasher.digest("sms-number", formatted),
            range_hash=self.hasher.digest("sms-range", digits[: self.config.prefix_digits]),
        )

    # ---------------------------------------------------------------- static rules

    def check_country(self, target: SmsTarget) -> None:
        allowed = self.config.allowed_countries
        if allowed and target.country not in allowed:
            self.metrics.sms_blocked.labels("country_not_allowed").inc()
            raise ValidationError.field("phone", f"SMS to {target.country} is not allowed")

    def check_blocked_prefix(self, target: SmsTarget) -> None:
        if target.e164.startswith(self.config.blocked_prefixes):
            self.metrics.sms_blocked.labels("blocked_prefix").inc()
            raise SmsBlockedError("SMS to this number range are blocked", reason="blocked_prefix")

    def check_static(self, target: SmsTarget) -> None:
        """The rules that need no store: allowed countries, then blocked prefixes."""
        self.check_country(target)
        self.check_blocked_prefix(target)

    # ---------------------------------------------------------------- store-backed rules

    def velocity_limit(self, target: SmsTarget) -> Limit:
        """At most N different numbers per range: the member is the hashed number, so the
        same number again is not a new one."""
        window = self.config.prefix_window_seconds
        return Limit(
            "prefix_velocity",
            self.store.keys.address_limit(target.range_hash, "sms_range", window),
            self.config.prefix_max_numbers,
            window,
            distinct=True,
            member=target.number_hash,
        )

    def cap_limits(self, target: SmsTarget) -> list[Limit]:
        """Country and global caps; each limit's scope is the refusal reason. Caps count
        SMS, not numbers: they take the call's member, unique per SMS."""
        keys, cfg = self.store.keys, self.config
        country = f"sms_guard:{target.country}"
        return [
            Limit("country_hourly_cap", keys.global_limit(country, HOUR), cfg.country_hour, HOUR),
            Limit("country_daily_cap", keys.global_limit(country, DAY), cfg.country_day, DAY),
            Limit("global_hourly_cap", keys.global_limit("sms_guard", HOUR), cfg.global_hour, HOUR),
            Limit("global_daily_cap", keys.global_limit("sms_guard", DAY), cfg.global_day, DAY),
        ]

    def limits(self, target: SmsTarget) -> list[Limit]:
        """Every store-backed rule but the budget, for one all-or-nothing count."""
        return [self.velocity_limit(target), *self.cap_limits(target)]

    def price(self, country: str) -> float:
        return self.config.prices.get(country, self.config.default_price)

    async def charge_budget(self, target: SmsTarget) -> Charge | None:
        """Add the SMS price to today's (UTC) spend unless that passes ``daily_budget``.

        Returns the charge (``None`` with no budget) so a caller whose request is refused
        afterwards can :meth:`refund` it. In :meth:`admit` it runs after the caps were
        counted: when it refuses, those hits stay counted. That is accepted on purpose:
        the store cannot take a hit back, a spent budget refuses every SMS until midnight
        UTC anyway, and the extra hits only make the caps stricter for their window.
        """
        cfg = self.config
        if cfg.daily_budget <= 0:
            return None
        now = self.clock.time()
        today = datetime.fromtimestamp(now, UTC).date()
        key = self.store.keys.counter(f"sms_spend:{today.isoformat()}")
        amount = _micros(self.price(target.country))
        added, total = await self.store.capped_add(
            key, amount, _micros(cfg.daily_budget), BUDGET_TTL
        )
        self.metrics.sms_spend.set(total / MICROS)
        if added:
            return Charge(key, amount)
        midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
        retry_after = _retry_after(midnight.timestamp() - now)
        log.warning(
            "sms.budget_exhausted",
            to=mask_phone(target.e164),
            country=target.country,
            spent=total / MICROS,
            budget=cfg.daily_budget,
            retry_after=retry_after,
        )
        self.metrics.sms_blocked.labels("daily_budget").inc()
        raise SmsBlockedError(
            "the daily SMS budget is spent; try again after midnight UTC",
            reason="daily_budget",
            retry_after=retry_after,
        )

    async def refund(self, charge: Charge) -> None:
        """Take back a charge whose SMS was not sent after all."""
        _, total = await self.store.capped_add(
            charge.key, -charge.micros, _micros(self.config.daily_budget), BUDGET_TTL
        )
        self.metrics.sms_spend.set(total / MICROS)
