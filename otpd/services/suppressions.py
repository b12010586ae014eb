"""The otpd-wide suppression list: recipients that must not be mailed or texted.

A permanent bounce, a complaint or an SMS opt-out (from a provider's report) and a manual
entry (``POST /v1/suppressions``) add a recipient; ``DELETE /v1/suppressions`` lifts it.
An OTP or link request to a suppressed recipient answers 422 ``recipient_suppressed`` up
front (:meth:`SuppressionList.check`); a message the dispatcher holds for one ends
``failed`` with ``suppressed`` and reaches no provider (:meth:`SuppressionList.is_suppressed`).

The store keeps a keyed hash of the normalised address, never the address: with it the
masked display form, the reason, who added it (``api`` or ``webhook``) and since when.
"""

from __future__ import annotations

from collections.abc import Mapping

from otpd.clock import Clock
from otpd.crypto import Hasher
from otpd.errors import RecipientSuppressedError, ValidationError
from otpd.services.audit import AuditTrail, mask_recipient
from otpd.store import Store
from otpd.store.base import Suppression
from otpd.validation import normalize_email, normalize_phone

__all__ = ["REASON_MAX", "SOURCES", "SuppressionList", "normalize_address"]

REASON_MAX = 64
SOURCES = frozenset({"api", "webhook"})


def normalize_address(value: str, field: str = "address") -> str:
    """An email address (as :func:`normalize_email` has it, then lowercased whole: a bounce
    for ``Ada@`` must stop mail to ``ada@``) or an E.164 number, or a 422."""
    if "@" in value:
        return normalize_email(value, field).lower()
    if value.startswith("+"):
        return normalize_phone(value, field)
    raise ValidationError.field(field, "not an email address or an E.164 phone number")


def check_reason(value: str, field: str = "reason") -> str:
    if not 1 <= len(value) <= REASON_MAX or not value.isprintable():
        raise ValidationError.field(field, f"must be 1 to {REASON_MAX} printable characters")
    return value


class SuppressionList:
    """Adds, reads and lifts suppressions; ``ttl_days`` 0 keeps them for good."""

    def __init__(
        self,
        store: Store,
        hasher: Hasher,
        clock: Clock,
        audit: AuditTrail,
        *,
        ttl_days: int = 0,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.clock = clock
        self.audit = audit
        self.ttl = ttl_days * 86400

    def _key(self, normalized: str) -> str:
        return self.hasher.digest("suppression", normalized)

    async def add(self, address: str, reason: str, *, source: str = "api") -> Suppression:
        """Suppress ``address`` (replacing an earlier entry) and record it in the trail."""
        if source not in SOURCES:
            raise ValueError(f"unknown suppression source {source!r}")
        normalized = normalize_address(address)
        record = Suppression(
            display=mask_recipient(normalized),
            reason=check_reason(reason),
            source=source,
            since=self.clock.time(),
        )
        await self.store.suppress(self._key(normalized), record, self.ttl)
        await self.audit.record(
            "recipient_suppressed", recipient=normalized, reason=record.reason, source=source
        )
        return record

    async def get(self, address: str) -> Suppression | None:
        (found,) = await self.store.suppressions([self._key(normalize_address(address))])
        return found

    async def remove(self, address: str) -> bool:
        """Lift the suppression of ``address``; whether there was one."""
        normalized = normalize_address(address)
        removed = await self.store.unsuppress(self._key(normalized))
        if removed:
            await self.audit.record("suppression_removed", recipient=normalized)
        return removed

    def hashes(self, addresses: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """The fields and the keyed hashes of their addresses, for a store operation that
        refuses suppressed recipients itself (``Store.issue_otp(unless_suppressed=...)``:
        no round trip of its own)."""
        fields = list(addresses)
        return fields, [self._key(normalize_address(addresses[f], f)) for f in fields]

    async def check(self, addresses: Mapping[str, str]) -> None:
        """Raise :class:`RecipientSuppressedError` naming the first field (``email``,
        ``phone``) whose address is suppressed: one store round trip for all of them."""
        if not addresses:
            return
        fields, keys = self.hashes(addresses)
        found = await self.store.suppressions(keys)
        for field, hit in zip(fields, found, strict=True):
            if hit is not None:
                raise RecipientSuppressedError(field)

    async def is_suppressed(self, address: str) -> Suppression | None:
        """The suppression of a recipient the dispatcher is about to send to (None for an
        address no route could have suppressed)."""
        key = self.key_of(address)
        return None if key is None else await self.lookup(key)

    def key_of(self, address: str) -> str | None:
        """The keyed hash ``address`` is suppressed under (None for an address no route
        could have suppressed), for a store step that checks it along with its own work."""
        try:
            return self._key(normalize_address(address))
        except ValidationError:
            return None

    async def lookup(self, key: str) -> Suppression | None:
        """The suppression kept under ``key`` (:meth:`key_of`), or None."""
        (found,) = await self.store.suppressions([key])
        return found
