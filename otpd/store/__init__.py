"""Storage of hashed codes, link tokens, rate-limit windows and task records.

``base`` is the protocol and its values, ``registry`` picks a backend by name,
``memory`` and ``redis`` are the built-in backends, ``keys`` their key layout.
"""

from otpd.store.base import (
    TOKEN_FIELDS,
    AuditEntry,
    AuditPage,
    Bucket,
    BucketKind,
    Claim,
    ClaimState,
    Limit,
    LimitExceeded,
    OtpRecord,
    Store,
    TokenCheck,
    TokenOutcome,
    TokenRecord,
    VerifyOutcome,
)
from otpd.store.registry import StoreDeps, create_store, register_backend

__all__ = [
    "TOKEN_FIELDS",
    "AuditEntry",
    "AuditPage",
    "Bucket",
    "BucketKind",
    "Claim",
    "ClaimState",
    "Limit",
    "LimitExceeded",
    "OtpRecord",
    "Store",
    "StoreDeps",
    "TokenCheck",
    "TokenOutcome",
    "TokenRecord",
    "VerifyOutcome",
    "create_store",
    "register_backend",
]
