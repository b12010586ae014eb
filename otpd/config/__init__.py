"""Configuration: one frozen dataclass per TOML section, loaded and validated once.

``sections`` holds otpd's own settings, ``vendors`` the delivery vendors' and the one table
of provider names, ``model`` the whole :class:`Config` with the rules that span sections,
``loader`` the TOML and environment loading. Every problem is reported in one
:class:`~otpd.errors.ConfigError`, one line per problem, each naming its key.
"""

from otpd.config.checks import Problem, is_loopback
from otpd.config.loader import load_config, masked_config
from otpd.config.model import Config, exposure_problem, metrics_exposure_problem
from otpd.config.sections import (
    ApiKey,
    AuditConfig,
    AuthConfig,
    BreakerConfig,
    DispatchConfig,
    EmailConfig,
    LinksConfig,
    LoggingConfig,
    MetricsConfig,
    OtpConfig,
    OutboxConfig,
    ProductConfig,
    SecurityConfig,
    ServerConfig,
    SmsConfig,
    StoreConfig,
    TokensConfig,
    TotpConfig,
    WebhooksConfig,
)
from otpd.config.vendors import (
    EMAIL_PROVIDERS,
    PROVIDERS,
    SMS_PROVIDERS,
    MailgunConfig,
    ProviderSpec,
    SendgridConfig,
    SesConfig,
    SmtpConfig,
    SnsConfig,
    TwilioConfig,
    VonageConfig,
)

__all__ = [
    "EMAIL_PROVIDERS",
    "PROVIDERS",
    "SMS_PROVIDERS",
    "ApiKey",
    "AuditConfig",
    "AuthConfig",
    "BreakerConfig",
    "Config",
    "DispatchConfig",
    "EmailConfig",
    "LinksConfig",
    "LoggingConfig",
    "MailgunConfig",
    "MetricsConfig",
    "OtpConfig",
    "OutboxConfig",
    "Problem",
    "ProductConfig",
    "ProviderSpec",
    "SecurityConfig",
    "SendgridConfig",
    "ServerConfig",
    "SesConfig",
    "SmsConfig",
    "SmtpConfig",
    "SnsConfig",
    "StoreConfig",
    "TokensConfig",
    "TotpConfig",
    "TwilioConfig",
    "VonageConfig",
    "WebhooksConfig",
    "exposure_problem",
    "is_loopback",
    "load_config",
    "masked_config",
    "metrics_exposure_problem",
]
