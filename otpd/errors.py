"""The otpd error tree.

Every error carries a stable API ``code`` and an HTTP ``status`` so one middleware maps
errors to responses::

    OtpdError
    ├── ConfigError                 invalid configuration (never reaches an HTTP caller)
    ├── ValidationError      422    bad input, with per-field details
    ├── UnauthorizedError    401    missing or wrong API key
    ├── NotFoundError        404    unknown task, route or resource
    ├── InvalidTokenError    400    unknown, expired, used or superseded link token
    ├── IdempotencyKeyReusedError  422  an idempotency key sent again with another payload
    ├── IdempotencyKeyInUseError   409  an idempotency key whose first request still runs
    ├── TotpAlreadyEnabledError    409  a TOTP enrolment for a user who has TOTP enabled
    ├── RateLimitedError     429    a rate limit refused the request (``retry_after``)
    │   └── SmsBlockedError  429    the SMS fraud and cost guard refused the request
    ├── UnavailableError     503    the store or the dispatcher cannot take work now
    │   └── StoreDegradedError 503  the store runs on its fallback and this must not
    ├── StartupError                the daemon cannot start (never reaches an HTTP caller)
    └── DeliveryError               a provider failed to deliver (dispatcher-internal)
        ├── TransientDeliveryError  worth failing over and retrying later
        └── PermanentDeliveryError  the recipient is refused: no failover, no retry
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ConfigError",
    "DeliveryError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyReusedError",
    "InvalidTokenError",
    "NotFoundError",
    "OtpdError",
    "PermanentDeliveryError",
    "RateLimitedError",
    "RecipientSuppressedError",
    "SmsBlockedError",
    "StartupError",
    "StoreDegradedError",
    "TotpAlreadyEnabledError",
    "TransientDeliveryError",
    "UnauthorizedError",
    "UnavailableError",
    "ValidationError",
]


class OtpdError(Exception):
    """Base of every error otpd raises on purpose."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class ConfigError(OtpdError, ValueError):
    """The configuration is invalid; the message names the offending key.

    ``problems`` lists every problem found in one pass as ``"key: what is wrong"`` lines
    (``details["key"]`` is the first key), so one run of ``otpd check-config`` shows them all.
    """

    code = "config_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        problems: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, details=details)
        self.problems: tuple[str, ...] = problems or (message,)

    @classmethod
    def from_problems(cls, problems: Sequence[Any]) -> ConfigError:
        """One error for several problems (objects with ``key`` and ``text``)."""
        lines = tuple(f"{p.key}: {p.text}" for p in problems)
        return cls(
            "; ".join(lines),
            details={"key": problems[0].key, "keys": [p.key for p in problems]},
            problems=lines,
        )


class ValidationError(OtpdError, ValueError):
    """Input failed validation; ``details["fields"]`` maps field names to problems."""

    code = "validation_error"
    status = 422

    def __init__(
        self,
        message: str = "request validation failed",
        *,
        fields: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        merged = dict(details or {})
        if fields:
            merged["fields"] = dict(fields)
        super().__init__(message, details=merged)
        self.fields = dict(fields or {})

    @classmethod
    def field(cls, name: str, problem: str) -> ValidationError:
        return cls(f"{name}: {problem}", fields={name: problem})


class RecipientSuppressedError(OtpdError):
    """The recipient is on the suppression list; ``details["field"]`` names which one
    (``email`` or ``phone``), never the address, so the caller can ask for another."""

    code = "recipient_suppressed"
    status = 422

    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: the recipient is suppressed", details={"field": field})
        self.field = field


class UnauthorizedError(OtpdError):
    code = "unauthorized"
    status = 401


class NotFoundError(OtpdError, LookupError):
    code = "not_found"
    status = 404


class InvalidTokenError(OtpdError):
    """One answer for unknown, expired, used and superseded tokens alike."""

    code = "invalid_token"
    status = 400

    def __init__(self, message: str = "the link is invalid or has expired") -> None:
        super().__init__(message)


class IdempotencyKeyReusedError(OtpdError):
    """An idempotency key came back with a different request: nothing is sent, and the
    first request's task stays the key's answer (IETF httpapi Idempotency-Key draft)."""

    code = "idempotency_key_reused"
    status = 422

    def __init__(
        self, message: str = "this idempotency key was used for a different request"
    ) -> None:
        super().__init__(message)


class IdempotencyKeyInUseError(OtpdError):
    """The first request with this idempotency key is still being processed; retry later."""

    code = "idempotency_key_in_use"
    status = 409

    def __init__(
        self, message: str = "a request with this idempotency key is still being processed"
    ) -> None:
        super().__init__(message)


class RateLimitedError(OtpdError):
    code = "rate_limited"
    status = 429

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        scope: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        merged = {"retry_after": retry_after, "scope": scope, **(details or {})}
        super().__init__(message, details=merged)
        self.retry_after = retry_after
        self.scope = scope


class SmsBlockedError(RateLimitedError):
    """The SMS fraud and cost guard refused a send; ``reason`` says which rule."""

    code = "sms_blocked"

    def __init__(self, message: str, *, reason: str, retry_after: int = 3600) -> None:
        super().__init__(message, retry_after=retry_after, scope="sms", details={"reason": reason})
        self.reason = reason


class UnavailableError(OtpdError):
    code = "unavailable"
    status = 503


class StoreDegradedError(UnavailableError):
    """The store serves from its process-local fallback (``store.fallback``), and this
    operation must not run there (the SMS budget is shared, so it is never spent blind)."""


class StartupError(OtpdError):
    """The daemon cannot start; the message names what failed (an address to listen on,
    a provider and its setting), so the command line can print it as one line."""

    code = "startup_failed"


class DeliveryError(OtpdError):
    """A provider could not deliver a message.

    ``reason`` is a short stable code (``smtp_550``, ``timeout``, ``invalid_recipient``);
    the message must never contain a code, a token or a full address.
    """

    code = "delivery_failed"
    permanent = False

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        provider: str = "",
        blames_provider: bool | None = None,
    ) -> None:
        super().__init__(message, details={"reason": reason, "provider": provider})
        self.reason = reason
        self.provider = provider
        # Whether the failure says something about the provider's health (network, 5xx,
        # throttling, auth): only those move its circuit breaker. A refusal of this
        # message or its recipient says nothing about the next message.
        self.blames_provider = not self.permanent if blames_provider is None else blames_provider


class TransientDeliveryError(DeliveryError):
    """Worth trying the next provider now and this one again later. With
    ``blames_provider=False`` (the provider refused this request, not for its health) the
    chain fails over without counting it against the provider's circuit."""


class PermanentDeliveryError(DeliveryError):
    """The recipient (or the message) is refused for good: no failover, no retry."""

    permanent = True


class TotpAlreadyEnabledError(OtpdError):
    """An enrolment was started for a user whose TOTP is enabled: disable it first."""

    code = "totp_already_enabled"
    status = 409

    def __init__(self, message: str = "TOTP is already enabled for this user") -> None:
        super().__init__(message)
