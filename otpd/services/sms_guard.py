"""The SMS pumping fraud and cost guard: decides whether one more SMS may be sent.

Bots that request codes to premium-rate numbers turn every SMS into revenue for the
attacker and a bill for us. The guard refuses such traffic before a code is stored or a
message is queued, with rules checked cheapest first:

1. ``allowed_countries`` and ``blocked_prefixes``: static, no store round trip;
2. prefix velocity (at most ``prefix_max_numbers`` different numbers of one number range,
   the first ``prefix_digits`` digits, within ``prefix_window_seconds``) together with the
   per-country and global caps per hour and per day: sliding windows in the store, all
   counted or none in one call;
3. the daily budget: estimated spend per UTC day, in the store. While the store serves
   from its local fallback (``store.fallback``) the budget fails closed: every SMS is
   refused with ``budget_unavailable``.

Every refusal increments ``otpd_sms_blocked_total{reason}``. Numbers reach the store only
as keyed hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import phonenumbers
import structlog

from otpd.config import SmsConfig
from otpd.crypto import new_id
from otpd.errors import SmsBlockedError, StoreDegradedError, ValidationError
from otpd.redaction import mask_phone
from otpd.services.deps import ServiceDeps
from otpd.services.limits import retry_after
from otpd.store import Limit
from otpd.validation import e164, parse_phone

__all__ = ["Charge", "SmsGuard", "SmsTarget"]

log = structlog.get_logger("otpd.sms_guard")

# Money is counted in millionths of the currency unit: integer sums are exact, so a budget
# of 1.00 holds exactly twenty SMS at 0.05 (float sums would refuse the twentieth).
MICROS = 1_000_000
# The spend counter of a day outlives that day, so a restart near midnight still sees it.
BUDGET_TTL = 2 * 86400
# While the store serves from its fallback the budget cannot be read: ask again soon.
BUDGET_UNAVAILABLE_RETRY = 30


def _micros(amount: float) -> int:
    return round(amount * MICROS)


@dataclass(frozen=True, slots=True)
class Charge:
    """Money added to a day's spend counter, in millionths."""

    counter: str
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

    def __init__(self, config: SmsConfig, deps: ServiceDeps) -> None:
        self.config = config
        self.deps = deps
        self.store = deps.store
        self.hasher = deps.hasher
        self.clock = deps.clock
        self.metrics = deps.metrics
        self.metrics.sms_budget.set(config.daily_budget)

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
            raise self.deps.limits.error(refused, "sms", "too many SMS were sent recently")
        await self.charge_budget(target)

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

    def limits(self, target: SmsTarget) -> list[Limit]:
        """Every store-backed rule but the budget, for one all-or-nothing count."""
        return self.deps.limits.sms_guard(target.country, target.range_hash, target.number_hash)

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
        counter = f"sms_spend:{today.isoformat()}"
        amount = _micros(self.price(target.country))
        try:
            added, total = await self.store.capped_add(
                counter, amount, _micros(cfg.daily_budget), BUDGET_TTL
            )
        except StoreDegradedError:
            # The store serves from its local fallback, and the budget is shared by every
            # instance: refuse rather than spend it blind.
            log.warning(
                "sms.budget_unavailable", to=mask_phone(target.e164), country=target.country
            )
            self.metrics.sms_blocked.labels("budget_unavailable").inc()
            raise SmsBlockedError(
                "the daily SMS budget cannot be checked now; try again later",
                reason="budget_unavailable",
                retry_after=BUDGET_UNAVAILABLE_RETRY,
            ) from None
        self.metrics.sms_spend.set(total / MICROS)
        if added:
            return Charge(counter, amount)
        midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
        after = retry_after(midnight.timestamp() - now)
        log.warning(
            "sms.budget_exhausted",
            to=mask_phone(target.e164),
            country=target.country,
            spent=total / MICROS,
            budget=cfg.daily_budget,
            retry_after=after,
        )
        self.metrics.sms_blocked.labels("daily_budget").inc()
        raise SmsBlockedError(
            "the daily SMS budget is spent; try again after midnight UTC",
            reason="daily_budget",
            retry_after=after,
        )

    async def refund(self, charge: Charge) -> None:
        """Take back a charge whose SMS was not sent after all."""
        try:
            _, total = await self.store.capped_add(
                charge.counter, -charge.micros, _micros(self.config.daily_budget), BUDGET_TTL
            )
        except StoreDegradedError:
            # the refusal stands either way; the budget only stays a little stricter today
            log.warning("sms.budget_not_refunded", micros=charge.micros)
            return
        self.metrics.sms_spend.set(total / MICROS)
