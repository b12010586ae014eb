"""Storage of hashed codes, rate-limit windows and task records, in memory or in Redis."""

from otpd.store.base import (
    Limit,
    LimitExceeded,
    OtpRecord,
    Store,
    TokenCheck,
    TokenOutcome,
    TokenRecord,
    VerifyOutcome,
)
from otpd.store.keys import Keys

__all__ = [
    "Keys",
    "Limit",
    "LimitExceeded",
    "OtpRecord",
    "Store",
    "TokenCheck",
    "TokenOutcome",
    "TokenRecord",
    "VerifyOutcome",
]
