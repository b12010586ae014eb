"""otpd: one-time passcodes and transactional messages, as an asyncio daemon or library."""

from otpd.api import create_app
from otpd.app import Otpd
from otpd.config import Config, load_config
from otpd.errors import (
    ConfigError,
    DeliveryError,
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InvalidTokenError,
    NotFoundError,
    OtpdError,
    PermanentDeliveryError,
    RateLimitedError,
    RecipientSuppressedError,
    SmsBlockedError,
    StartupError,
    StoreDegradedError,
    TotpAlreadyEnabledError,
    TransientDeliveryError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
)

__all__ = [
    "Config",
    "ConfigError",
    "DeliveryError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyReusedError",
    "InvalidTokenError",
    "NotFoundError",
    "Otpd",
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
    "create_app",
    "load_config",
]
__version__ = "0.1.0"
