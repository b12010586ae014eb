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
   refused with ``budget_unavailable``;
4. conversion (OTP codes only): per number range, the codes sent and verified within
   ``conversion_window_seconds``. A range with at least ``conversion_min_samples`` codes,
   fewer than ``min_conversion`` of them verified, is blocked for ``auto_block_seconds``
   (``low_conversion``); blocks are listed and lifted with ``/v1/sms/blocks``. This rule
   fails open: while the store cannot count, codes go out uncounted.

Every refusal increments ``otpd_sms_blocked_total{reason}``. Numbers reach the store only
as keyed hashes (a blocked range's prefix also sealed, for the list of blocks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import phonenumbers
import structlog

from otpd.clock import rfc3339
from otpd.config import SmsConfig
from otpd.crypto import new_id
from otpd.errors import (
    NotFoundError,
    SmsBlockedError,
    StoreDegradedError,
    UnavailableError,
    ValidationError,
)
from otpd.redaction import mask_phone
from otpd.sealing import SealError
from otpd.services.deps import ServiceDeps
from otpd.services.limits import retry_after
from otpd.store import Limit
from otpd.store.base import ConversionRule, SmsBlock
from otpd.validation import e164, parse_phone

__all__ = ["Charge", "Sample", "ShownBlock", "SmsGuard", "SmsTarget"]

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
class Sample:
    """An SMS code counted for its range's conversion, at ``at``; see :meth:`SmsGuard.uncount`."""

    range_hash: str
    at: float


@dataclass(frozen=True, slots=True)
class ShownBlock:
    """A blocked range as ``GET /v1/sms/blocks`` shows it: the prefix opened ("" when no
    key of the ring opens it any more)."""

    prefix: str
    block: SmsBlock


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
        self.rule = ConversionRule(
            window=config.conversion_window_seconds,
            min_samples=config.conversion_min_samples,
            min_conversion=config.min_conversion,
            block_seconds=config.auto_block_seconds,
        )
        self._prefix = re.compile(rf"\+[0-9]{{{config.prefix_digits}}}")

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

    # ---------------------------------------------------------------- conversion

    def _sealed_prefix(self, target: SmsTarget) -> str:
        prefix = target.e164[: 1 + self.config.prefix_digits]
        return self.deps.keyring.seal(prefix.encode(), f"sms-range:{target.range_hash}")

    async def count_code(self, target: SmsTarget) -> Sample | None:
        """Count one OTP code to ``target`` for its range's conversion, or raise
        :class:`SmsBlockedError` (``low_conversion``) when the range is blocked, this call
        included. None: not counted (the rule is off, or the store cannot count now)."""
        if self.rule.min_samples <= 0:
            return None
        now = self.clock.time()
        try:
            block = await self.store.sms_sent(
                target.range_hash, self._sealed_prefix(target), self.rule, now
            )
        except UnavailableError:
            log.warning("sms.conversion_unavailable", country=target.country)
            return None
        if block is None:
            return Sample(target.range_hash, now)
        if block.fresh:
            log.warning(
                "sms.range_blocked",
                to=mask_phone(target.e164),
                country=target.country,
                sent=block.sent,
                verified=block.verified,
            )
            await self.deps.audit.record(
                "sms_range_blocked",
                recipient=target.e164,
                range_hash=target.range_hash,
                reason=block.reason,
                sent=block.sent,
                verified=block.verified,
                expires_at=rfc3339(block.expires_at),
            )
        self.metrics.sms_blocked.labels(block.reason).inc()
        raise SmsBlockedError(
            "too few codes sent to this number range are verified; SMS to it are paused",
            reason=block.reason,
            retry_after=retry_after(block.expires_at - now),
        )

    async def uncount(self, sample: Sample) -> None:
        """Take back a counted code that was not sent after all (its request was refused)."""
        try:
            await self.store.sms_unsent(sample.range_hash, self.rule, sample.at)
        except UnavailableError:
            log.warning("sms.conversion_not_uncounted")

    async def credit(self, range_hash: str, issued_at: float) -> None:
        """Credit a verified SMS code to its range; a store failure only loses the credit."""
        if self.rule.min_samples <= 0:
            return
        try:
            await self.store.sms_verified(range_hash, issued_at, self.rule, self.clock.time())
        except UnavailableError:
            log.warning("sms.conversion_not_credited")

    async def blocks(self) -> list[ShownBlock]:
        """Every live block, the soonest to expire first, with its prefix opened."""
        shown = []
        for block in await self.store.sms_blocks(self.clock.time()):
            try:
                bound = f"sms-range:{block.range_hash}"
                prefix = self.deps.keyring.open(block.sealed_prefix, bound).decode()
            except SealError:
                prefix = ""
            shown.append(ShownBlock(prefix, block))
        return shown

    async def lift(self, prefix: str) -> None:
        """Lift the block of the range ``prefix`` (``+`` and ``prefix_digits`` digits) and
        forget its samples; :class:`NotFoundError` when it is not blocked."""
        if self._prefix.fullmatch(prefix) is None:
            raise ValidationError.field(
                "prefix", f"must be + and exactly {self.config.prefix_digits} digits"
            )
        range_hash = self.hasher.digest("sms-range", prefix[1:])
        if not await self.store.sms_unblock(range_hash, self.clock.time()):
            raise NotFoundError("this number range is not blocked")
        await self.deps.audit.record("sms_block_lifted", range_hash=range_hash)
