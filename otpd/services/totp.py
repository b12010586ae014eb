"""Authenticator-app codes (TOTP, RFC 6238) and one-time recovery codes.

The secret is sealed with the keyring, bound to its user (``totp:<user id>``), so a
store dump holds no usable secret; recovery codes are kept as keyed hashes only. A check
is a read of the sealed secret, the code compared in this process against every step of
the window, then one atomic script that accepts the matched step only if it is above the
last accepted one (a compare-and-set): a code is accepted once, however many requests
carry it at the same time.
"""

from __future__ import annotations

import io
import secrets
from collections import OrderedDict
from dataclasses import dataclass

import segno
import structlog

from otpd.clock import rfc3339
from otpd.config import TotpConfig
from otpd.crypto import new_id
from otpd.errors import NotFoundError, RateLimitedError, TotpAlreadyEnabledError, ValidationError
from otpd.models import Channel, Message
from otpd.sealing import SealError
from otpd.services.deps import ServiceDeps
from otpd.services.limits import retry_after
from otpd.store.base import Bucket, Limit, TotpCheck, TotpOutcome, TotpRecord
from otpd.totp import SECRET_BYTES, b32_secret, matching_steps, otpauth_uri
from otpd.validation import (
    check_client_ip,
    check_locale,
    check_user_agent,
    check_user_id,
    normalize_email,
)

__all__ = [
    "ENROLLMENT_SECONDS",
    "RECOVERY_CODES",
    "TotpConfirmed",
    "TotpEnrollment",
    "TotpService",
    "TotpVerified",
]

log = structlog.get_logger("otpd.totp")

ENROLLMENT_SECONDS = 600
"""How long a pending enrolment waits for its confirming code."""
RECOVERY_CODES = 10
"""Recovery codes per set: each works once."""
MAX_ACCOUNT_NAME = 200
_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32: 40 bits a code
_RECOVERY_LEN = 8
_CAS_TRIES = 3  # reads again when the secret was replaced between the read and the check
_OPENED_CACHE = 10_000  # enrolments whose opened secret a process keeps for one-trip verifies


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """What the user scans or types into the app; shown once, never stored in clear."""

    secret: str
    otpauth_uri: str
    qr_svg: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TotpConfirmed:
    enabled: bool
    recovery_codes: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TotpVerified:
    verified: bool
    reason: str | None = None
    remaining: int | None = None


def _qr_svg(uri: str) -> str:
    """The URI as a QR code in SVG. The mask is fixed: segno's evaluation of all eight
    took ~30 ms of the event loop per code here, a fixed one ~5 ms (any mask scans)."""
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False, mask=0, boost_error=False).save(
        buffer, kind="svg", xmldecl=False, scale=4, border=4
    )
    return buffer.getvalue().decode()


def _new_recovery_code() -> str:
    chars = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LEN))
    return f"{chars[:4]}-{chars[4:]}"


def _normalized_recovery(code: str) -> str | None:
    """A recovery code as typed (any case, with or without the dash), or None."""
    plain = code.strip().lower().replace("-", "").replace(" ", "")
    if len(plain) != _RECOVERY_LEN or any(c not in _RECOVERY_ALPHABET for c in plain):
        return None
    return plain


def _check_totp_code(code: str) -> str:
    if not (1 <= len(code) <= 10 and code.isascii() and code.isdigit()):
        raise ValidationError.field("code", "1 to 10 digits")
    return code


class TotpService:
    """Enrolment, confirmation, verification, recovery codes and removal of TOTP."""

    def __init__(self, config: TotpConfig, deps: ServiceDeps, *, issuer: str) -> None:
        self.config = config
        self.deps = deps
        self.store = deps.store
        self.keyring = deps.keyring
        self.hasher = deps.hasher
        self.clock = deps.clock
        self.audit = deps.audit
        self.issuer = issuer
        # enabled enrolments read before: (record, opened secret), most recent last. The
        # check script compares the sealed secret it is given with the stored one, so a
        # cached entry can never accept a code of a secret that was replaced or deleted;
        # with it, a verify is one store round trip instead of a read and a check.
        self._opened: OrderedDict[str, tuple[TotpRecord, bytes]] = OrderedDict()

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _bound(user_id: str) -> str:
        return f"totp:{user_id}"

    def _lockout(self, user_id: str) -> Limit:
        cfg = self.config
        return Limit(
            "totp_failures",
            Bucket.user(user_id, "totp_fail"),
            cfg.max_failures,
            cfg.lockout_seconds,
        )

    def _recovery_hash(self, user_id: str, plain: str) -> str:
        return self.hasher.digest("totp_recovery", user_id, plain)

    def _new_recovery_set(self, user_id: str) -> tuple[tuple[str, ...], list[str]]:
        codes = tuple(_new_recovery_code() for _ in range(RECOVERY_CODES))
        hashes = [self._recovery_hash(user_id, code.replace("-", "")) for code in codes]
        return codes, hashes

    async def _locked(self, user_id: str, outcome: TotpOutcome, **fields: str | None) -> None:
        if outcome.check is not TotpCheck.LOCKED:
            return
        await self.audit.record(
            "totp_rate_limited", user_id=user_id, scope="totp_failures", **fields
        )
        raise RateLimitedError(
            "too many wrong codes; try again later",
            retry_after=retry_after(outcome.retry_after),
            scope="totp_failures",
        )

    async def _check(
        self, user_id: str, code: str, *, confirm: list[str] | None = None
    ) -> TotpOutcome:
        """Read the (pending) record, find the steps ``code`` matches, compare-and-set."""
        pending = confirm is not None
        now = self.clock.time()
        outcome = TotpOutcome(TotpCheck.MISSING)
        member = new_id("f")
        for _ in range(_CAS_TRIES):
            cached = None if pending else self._opened.pop(user_id, None)
            if cached is not None:
                record, secret = cached
            else:
                found = await self.store.totp_get(user_id, pending=pending, now=now)
                if found is None:
                    return TotpOutcome(TotpCheck.MISSING)
                record = found
                try:
                    secret = self.keyring.open(record.sealed_secret, self._bound(user_id))
                except SealError:
                    # a key that left the keyring: the enrolment cannot be used any more
                    log.warning("totp.secret_unreadable", user_id=user_id)
                    return TotpOutcome(TotpCheck.MISSING)
            steps = matching_steps(
                secret,
                code,
                now,
                digits=record.digits,
                period=record.period,
                algorithm=record.algorithm,
                window=self.config.window,
            )
            outcome = await self.store.totp_check(
                user_id,
                record.sealed_secret,
                steps,
                self._lockout(user_id),
                member,
                now,
                confirm=confirm,
            )
            if outcome.check is TotpCheck.CHANGED:
                continue  # replaced meanwhile (or the cached one is stale): read it again
            # an enabled enrolment (a confirm that succeeded enabled it): kept for next time
            if outcome.check is not TotpCheck.MISSING and (
                not pending or outcome.check is TotpCheck.OK
            ):
                self._opened[user_id] = (record, secret)
                while len(self._opened) > _OPENED_CACHE:
                    self._opened.popitem(last=False)
            return outcome
        return TotpOutcome(TotpCheck.MISSING) if outcome.check is TotpCheck.CHANGED else outcome

    # ------------------------------------------------------------------ use cases

    async def enroll(self, *, user_id: str, account_name: str) -> TotpEnrollment:
        """Start (or restart) a pending enrolment with a new secret; 409 when enabled."""
        check_user_id(user_id)
        account_name = account_name.strip()
        if not account_name or len(account_name) > MAX_ACCOUNT_NAME:
            raise ValidationError.field("account_name", f"1 to {MAX_ACCOUNT_NAME} characters")
        if not account_name.isprintable() or ":" in account_name:
            raise ValidationError.field("account_name", "printable characters, without ':'")
        cfg = self.config
        secret = secrets.token_bytes(SECRET_BYTES[cfg.algorithm])
        now = self.clock.time()
        expires_at = now + ENROLLMENT_SECONDS
        record = TotpRecord(
            sealed_secret=self.keyring.seal(secret, self._bound(user_id)),
            algorithm=cfg.algorithm,
            digits=cfg.digits,
            period=cfg.period,
        )
        if not await self.store.totp_begin(user_id, record, expires_at, now):
            raise TotpAlreadyEnabledError()
        uri = otpauth_uri(
            secret,
            issuer=self.issuer,
            account_name=account_name,
            digits=cfg.digits,
            period=cfg.period,
            algorithm=cfg.algorithm,
        )
        await self.audit.record("totp_enrollment_started", user_id=user_id)
        return TotpEnrollment(b32_secret(secret), uri, _qr_svg(uri), expires_at)

    async def confirm(
        self, *, user_id: str, code: str, email: str | None = None, locale: str | None = None
    ) -> TotpConfirmed:
        """Enable TOTP with the first code from the app; the recovery codes are shown once."""
        check_user_id(user_id)
        _check_totp_code(code)
        to = normalize_email(email) if email else None
        locale = check_locale(locale)
        codes, hashes = self._new_recovery_set(user_id)
        outcome = await self._check(user_id, code, confirm=hashes)
        if outcome.check is TotpCheck.MISSING:
            raise NotFoundError("no pending TOTP enrolment for this user")
        await self._locked(user_id, outcome)
        if outcome.check is not TotpCheck.OK:
            await self.audit.record(
                "totp_failed", user_id=user_id, reason="invalid_code", stage="confirm"
            )
            return TotpConfirmed(False, reason="invalid_code")
        await self.audit.record("totp_enabled", user_id=user_id)
        if to:
            await self._notice("totp_enabled", user_id, to, locale)
        return TotpConfirmed(True, codes)

    async def verify(
        self,
        *,
        user_id: str,
        code: str,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> TotpVerified:
        """Accept a code of the window once; a reused one is ``replayed``."""
        check_user_id(user_id)
        _check_totp_code(code)
        client_ip = check_client_ip(client_ip)
        user_agent = check_user_agent(user_agent)
        outcome = await self._check(user_id, code)
        seen = {"client_ip": client_ip, "user_agent": user_agent}
        await self._locked(user_id, outcome, **seen)
        if outcome.check is TotpCheck.OK:
            await self.audit.record("totp_verified", user_id=user_id, **seen)
            return TotpVerified(True)
        reason = {
            TotpCheck.MISSING: "not_enrolled",
            TotpCheck.REPLAYED: "replayed",
        }.get(outcome.check, "invalid_code")
        await self.audit.record("totp_failed", user_id=user_id, reason=reason, **seen)
        return TotpVerified(False, reason)

    async def verify_recovery(
        self,
        *,
        user_id: str,
        code: str,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> TotpVerified:
        """Consume one recovery code; ``remaining`` says how many are left."""
        check_user_id(user_id)
        if len(code) > 32:
            raise ValidationError.field("code", "at most 32 characters")
        client_ip = check_client_ip(client_ip)
        user_agent = check_user_agent(user_agent)
        plain = _normalized_recovery(code)
        # a code that cannot be one is hashed all the same: a failure like any other
        code_hash = self._recovery_hash(user_id, plain if plain is not None else "\x00" + code)
        outcome = await self.store.totp_use_recovery(
            user_id, code_hash, self._lockout(user_id), new_id("f"), self.clock.time()
        )
        seen = {"client_ip": client_ip, "user_agent": user_agent}
        await self._locked(user_id, outcome, **seen)
        if outcome.check is TotpCheck.OK:
            await self.audit.record(
                "recovery_code_used", user_id=user_id, remaining=outcome.remaining, **seen
            )
            return TotpVerified(True, remaining=outcome.remaining)
        reason = "not_enrolled" if outcome.check is TotpCheck.MISSING else "invalid_code"
        await self.audit.record(
            "totp_failed", user_id=user_id, reason=reason, stage="recovery_code", **seen
        )
        return TotpVerified(False, reason)

    async def regenerate(self, *, user_id: str) -> tuple[str, ...]:
        """A new set of recovery codes; the old set stops working. 404 when not enrolled."""
        check_user_id(user_id)
        codes, hashes = self._new_recovery_set(user_id)
        if not await self.store.totp_set_recovery(user_id, hashes):
            raise NotFoundError("TOTP is not enabled for this user")
        await self.audit.record("recovery_codes_regenerated", user_id=user_id)
        return codes

    async def delete(
        self, *, user_id: str, email: str | None = None, locale: str | None = None
    ) -> None:
        """Remove the secret and the recovery codes; 404 when not enrolled."""
        check_user_id(user_id)
        to = normalize_email(email) if email else None
        locale = check_locale(locale)
        self._opened.pop(user_id, None)  # nothing of it stays in this process
        if not await self.store.totp_delete(user_id):
            raise NotFoundError("TOTP is not enabled for this user")
        await self.audit.record("totp_disabled", user_id=user_id)
        if to:
            await self._notice("totp_disabled", user_id, to, locale)

    async def _notice(self, template: str, user_id: str, to: str, locale: str | None) -> None:
        """The security notice of a change to the user's second factor, by email."""
        now = self.clock.time()
        rendered = await self.deps.renderer.render_email(
            template, {"changed_at": rfc3339(now)}, locale
        )
        message = Message(
            Channel.EMAIL,
            to,
            rendered.text,
            rendered.subject,
            rendered.html,
            tag=template,
            audit=self.audit.context(user_id=user_id),
        )
        await self.deps.dispatcher.enqueue(message)
