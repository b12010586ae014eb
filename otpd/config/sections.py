"""The sections of otpd's own settings, one frozen dataclass each, checked on creation."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from otpd.config.checks import Checks, mailbox, secret
from otpd.config.vendors import EMAIL_PROVIDERS, SMS_PROVIDERS

__all__ = [
    "ApiKey",
    "AuditConfig",
    "AuthConfig",
    "BreakerConfig",
    "DispatchConfig",
    "EmailConfig",
    "EncryptionKey",
    "LinksConfig",
    "LoggingConfig",
    "MetricsConfig",
    "OtpConfig",
    "OutboxConfig",
    "ProductConfig",
    "SecurityConfig",
    "ServerConfig",
    "SmsConfig",
    "StoreConfig",
    "TokensConfig",
    "TotpConfig",
    "WebhooksConfig",
    "sentinel_addresses",
]

_URL = ("http://", "https://")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    env: Literal["dev", "production"] = "dev"
    max_body_bytes: int = 65536
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: float = 75.0
    max_connections: int = 1024
    instance_id: str = ""

    def __post_init__(self) -> None:
        c = Checks("server")
        c.need(0 <= self.port <= 65535, "port", "must be between 0 and 65535")
        c.need(1024 <= self.max_body_bytes <= 1 << 20, "max_body_bytes", "1 KiB to 1 MiB")
        for key in ("header_timeout_seconds", "body_timeout_seconds", "keepalive_timeout_seconds"):
            value = getattr(self, key)
            c.need(0 < value <= 3600, key, "must be greater than 0 and at most 3600")
        c.need(1 <= self.max_connections <= 1_000_000, "max_connections", "must be 1 to 1000000")
        c.need(
            re.fullmatch(r"[A-Za-z0-9_.:\-]{0,64}", self.instance_id) is not None,
            "instance_id",
            "letters, digits and _ . : - only, at most 64 (empty: host name and pid)",
        )
        c.done()


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "otpd:"
    max_connections: int = 50
    pool_timeout_seconds: float = 2.0
    socket_timeout_seconds: float = 2.0
    fallback: Literal["none", "memory"] = "none"
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    sentinel_urls: tuple[str, ...] = ()
    sentinel_service: str = ""
    # sentinel mode: a write is answered once this many replicas have it (WAIT, on the
    # write's own connection in the same round trip), so a failover cannot lose it
    replica_acks: int = 1
    replica_ack_timeout_seconds: float = 0.5

    def __post_init__(self) -> None:
        c = Checks("store")
        if self.mode == "cluster":
            c.need(
                self.redis_url.startswith(("redis://", "rediss://"))
                and urlsplit(self.redis_url).path in ("", "/", "/0"),
                "redis_url",
                "in cluster mode: a redis:// or rediss:// seed node, database 0",
            )
        if self.mode == "sentinel":
            c.need(bool(self.sentinel_urls), "sentinel_urls", "sentinel mode needs at least one")
            for url in self.sentinel_urls:
                c.need(
                    _host_port(url) is not None, "sentinel_urls", f"{url!r}: not redis://host:port"
                )
            c.need(
                re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", self.sentinel_service) is not None,
                "sentinel_service",
                "sentinel mode needs the master's name (letters, digits, _ . -)",
            )
        c.need(
            self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "redis_url",
            "must start with redis://, rediss:// or unix://",
        )
        c.need(
            re.fullmatch(r"[A-Za-z0-9:_.\-]{0,64}", self.key_prefix) is not None,
            "key_prefix",
            "letters, digits and : _ . - only, at most 64",
        )
        c.positive(self.max_connections, "max_connections")
        c.positive(self.pool_timeout_seconds, "pool_timeout_seconds")
        c.positive(self.socket_timeout_seconds, "socket_timeout_seconds")
        c.need(0 <= self.replica_acks <= 16, "replica_acks", "0 to 16 replicas")
        c.positive(self.replica_ack_timeout_seconds, "replica_ack_timeout_seconds")
        c.need(
            self.mode != "sentinel"
            or self.replica_acks == 0
            or self.replica_ack_timeout_seconds < self.socket_timeout_seconds,
            "replica_ack_timeout_seconds",
            "must be shorter than socket_timeout_seconds (the reply waits for it)",
        )
        c.done()


def _host_port(url: str) -> tuple[str, int] | None:
    """``redis://host:port`` -> (host, port), else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or port is None:
        return None
    return parts.hostname, port


def sentinel_addresses(urls: tuple[str, ...]) -> list[tuple[str, int]]:
    """The (host, port) of each checked ``store.sentinel_urls`` entry."""
    return [hp for hp in map(_host_port, urls) if hp is not None]


def _key_bytes(text: str) -> bytes | None:
    """The 32 raw bytes of a base64 (standard or URL-safe) AES-256 key, else None."""
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """One AES-256-GCM key of the at-rest keyring: an id and 32 bytes in base64."""

    id: str
    key: str = secret()

    def __post_init__(self) -> None:
        c = Checks("security.encryption_keys")
        c.need(
            re.fullmatch(r"[A-Za-z0-9_\-]{1,32}", self.id) is not None,
            "id",
            "letters, digits, _ and - only, 1 to 32",
        )
        c.need(
            _key_bytes(self.key) is not None,
            "key",
            f"key {self.id!r}: must be 32 bytes in base64 (make one: "
            "python -c 'import os, base64; print(base64.b64encode(os.urandom(32)).decode())')",
        )
        c.done()

    @property
    def raw(self) -> bytes:
        raw = _key_bytes(self.key)
        assert raw is not None  # checked on creation
        return raw


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    secret_key: str = secret()
    encryption_keys: tuple[EncryptionKey, ...] = ()

    def __post_init__(self) -> None:
        c = Checks("security")
        c.need(
            not self.secret_key or len(self.secret_key) >= 32,
            "secret_key",
            "must be at least 32 characters (make one: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))')",
        )
        ids = [k.id for k in self.encryption_keys]
        c.need(len(set(ids)) == len(ids), "encryption_keys", "key ids must be unique")
        c.done()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A caller's API key, stored as the SHA-256 hex digest of the key."""

    name: str
    sha256: str

    def __post_init__(self) -> None:
        c = Checks("auth.keys")
        c.need(bool(self.name), "name", "must not be empty")
        c.need(
            re.fullmatch(r"[0-9a-f]{64}", self.sha256) is not None,
            "sha256",
            f"key {self.name!r}: must be 64 lowercase hex characters",
        )
        c.done()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    keys: tuple[ApiKey, ...] = ()


@dataclass(frozen=True, slots=True)
class OtpConfig:
    length: int = 6
    ttl_seconds: int = 600
    max_attempts: int = 3
    per_user_hour: int = 5
    per_user_day: int = 10
    per_ip_hour: int = 50
    test_recipients: dict[str, str] = field(default_factory=dict)
    """Fixed addresses or E.164 numbers -> fixed codes (app-store reviewers, end-to-end
    tests): nothing is sent to them and no limit is counted."""
    allow_test_recipients_in_production: bool = False
    fallback_after_seconds: int = 30
    """A code requested with ``fallback`` goes out on the other channel when its first
    channel's task fails (or is reported undelivered) within this many seconds."""

    def __post_init__(self) -> None:
        c = Checks("otp")
        c.need(4 <= self.length <= 10, "length", "must be between 4 and 10")
        c.need(30 <= self.ttl_seconds <= 86400, "ttl_seconds", "must be 30 to 86400")
        c.need(1 <= self.max_attempts <= 20, "max_attempts", "must be 1 to 20")
        for key in ("per_user_hour", "per_user_day", "per_ip_hour"):
            c.positive(getattr(self, key), key)
        c.need(
            1 <= self.fallback_after_seconds <= self.ttl_seconds,
            "fallback_after_seconds",
            "must be 1 to otp.ttl_seconds",
        )
        for recipient, code in self.test_recipients.items():
            key = f"test_recipients.{recipient[:64]}"
            c.need(
                fixed_code_key(recipient) is not None,
                key,
                "must be an email address or an E.164 number (+ and 7 to 15 digits)",
            )
            c.need(
                len(code) == self.length and code.isascii() and code.isdigit(),
                key,
                f"the code must be {self.length} digits (otp.length)",
            )
        c.done()

    def fixed_codes(self) -> dict[str, str]:
        """The test recipients by their normalised address (as issue compares them)."""
        out: dict[str, str] = {}
        for recipient, code in self.test_recipients.items():
            key = fixed_code_key(recipient)
            if key is not None:
                out[key] = code
        return out


_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def fixed_code_key(value: str) -> str | None:
    """A test recipient as issue compares it: the email address normalised and in lower
    case, or the number."""
    if value.startswith("+"):
        return value if _E164.fullmatch(value) else None
    address = mailbox(value)
    return None if address is None else address.lower()


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    workers: int = 4
    queue_size: int = 10000
    max_attempts: int = 5
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    drain_timeout_seconds: float = 10.0
    task_ttl_seconds: int = 7 * 86400
    durable: bool = True
    provider_timeout_seconds: float = 10.0
    claim_idle_seconds: float = 60.0
    dead_letter_ttl_seconds: int = 7 * 86400
    partitions: int = 16

    def __post_init__(self) -> None:
        c = Checks("dispatch")
        c.need(1 <= self.workers <= 256, "workers", "must be 1 to 256")
        c.positive(self.queue_size, "queue_size")
        c.need(1 <= self.max_attempts <= 50, "max_attempts", "must be 1 to 50")
        c.positive(self.backoff_base_seconds, "backoff_base_seconds")
        c.need(
            self.backoff_max_seconds >= self.backoff_base_seconds,
            "backoff_max_seconds",
            "must be >= dispatch.backoff_base_seconds",
        )
        c.need(self.drain_timeout_seconds >= 0, "drain_timeout_seconds", "must be >= 0")
        c.positive(self.task_ttl_seconds, "task_ttl_seconds")
        c.need(
            0 < self.provider_timeout_seconds <= 300,
            "provider_timeout_seconds",
            "must be greater than 0 and at most 300",
        )
        c.positive(self.claim_idle_seconds, "claim_idle_seconds")
        c.positive(self.dead_letter_ttl_seconds, "dead_letter_ttl_seconds")
        c.need(1 <= self.partitions <= 1024, "partitions", "must be 1 to 1024")
        c.done()


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    dir: str = "var/outbox"

    def __post_init__(self) -> None:
        c = Checks("outbox")
        c.need(bool(self.dir), "dir", "must not be empty")
        c.done()


def _provider_names(c: Checks, names: tuple[str, ...], known: frozenset[str]) -> None:
    c.need(bool(names), "providers", "must name at least one provider")
    unknown = sorted(set(names) - known)
    c.need(not unknown, "providers", f"unknown {unknown}; known {sorted(known)}")
    c.need(len(set(names)) == len(names), "providers", "duplicates")


@dataclass(frozen=True, slots=True)
class EmailConfig:
    providers: tuple[str, ...] = ("outbox",)
    from_address: str = "no-reply@otpd.localhost"
    from_name: str = "otpd"
    reply_to: str = ""
    templates_dir: str = ""
    per_recipient_hour: int = 5
    global_hour: int = 1000

    def __post_init__(self) -> None:
        c = Checks("email")
        _provider_names(c, self.providers, EMAIL_PROVIDERS)
        c.need(mailbox(self.from_address) is not None, "from_address", "must be one plain address")
        c.need(
            not self.reply_to or mailbox(self.reply_to) is not None,
            "reply_to",
            "must be one plain address",
        )
        c.need(
            not self.templates_dir or Path(self.templates_dir).is_dir(),
            "templates_dir",
            f"{self.templates_dir!r} is not a directory",
        )
        c.positive(self.per_recipient_hour, "per_recipient_hour")
        c.positive(self.global_hour, "global_hour")
        c.done()


@dataclass(frozen=True, slots=True)
class SmsConfig:
    providers: tuple[str, ...] = ("console",)
    per_recipient_hour: int = 5
    allowed_countries: tuple[str, ...] = ()
    blocked_prefixes: tuple[str, ...] = ()
    global_hour: int = 500
    global_day: int = 5000
    country_hour: int = 200
    country_day: int = 2000
    prefix_digits: int = 8
    prefix_window_seconds: int = 600
    prefix_max_numbers: int = 10
    daily_budget: float = 0.0
    default_price: float = 0.05
    prices: dict[str, float] = field(default_factory=dict)
    conversion_window_seconds: int = 3600
    conversion_min_samples: int = 20
    min_conversion: float = 0.2
    auto_block_seconds: int = 43200

    def __post_init__(self) -> None:
        c = Checks("sms")
        _provider_names(c, self.providers, SMS_PROVIDERS)
        for key, codes in (("allowed_countries", self.allowed_countries), ("prices", self.prices)):
            for code in codes:
                c.need(
                    re.fullmatch(r"[A-Z]{2}", code) is not None,
                    key,
                    f"{code!r} is not an ISO 3166-1 alpha-2 code (upper case)",
                )
        for prefix in self.blocked_prefixes:
            c.need(
                re.fullmatch(r"\+\d{1,14}", prefix) is not None,
                "blocked_prefixes",
                f"{prefix!r} must look like +<digits>",
            )
        for key in (
            "per_recipient_hour",
            "global_hour",
            "global_day",
            "country_hour",
            "country_day",
            "prefix_window_seconds",
            "prefix_max_numbers",
        ):
            c.positive(getattr(self, key), key)
        c.need(4 <= self.prefix_digits <= 14, "prefix_digits", "must be 4 to 14")
        c.need(self.daily_budget >= 0, "daily_budget", "must be >= 0 (0 disables it)")
        c.need(self.default_price >= 0, "default_price", "must be >= 0")
        c.need(all(p >= 0 for p in self.prices.values()), "prices", "must be >= 0")
        c.positive(self.conversion_window_seconds, "conversion_window_seconds")
        c.need(
            self.conversion_min_samples >= 0,
            "conversion_min_samples",
            "must be >= 0 (0 disables conversion blocking)",
        )
        c.need(0 <= self.min_conversion <= 1, "min_conversion", "must be 0 to 1")
        c.positive(self.auto_block_seconds, "auto_block_seconds")
        c.done()


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    recovery_seconds: float = 60.0
    success_threshold: int = 2

    def __post_init__(self) -> None:
        c = Checks("breaker")
        c.positive(self.failure_threshold, "failure_threshold")
        c.positive(self.recovery_seconds, "recovery_seconds")
        c.positive(self.success_threshold, "success_threshold")
        c.done()


@dataclass(frozen=True, slots=True)
class LinksConfig:
    base_url: str = "http://127.0.0.1:8080"
    verify_email_path: str = "/verify-email"
    reset_password_path: str = "/reset-password"
    hosted: bool = False
    success_url: str = ""
    failure_url: str = ""

    def __post_init__(self) -> None:
        c = Checks("links")
        c.need(self.base_url.startswith(_URL), "base_url", "must be an http:// or https:// URL")
        for key in ("verify_email_path", "reset_password_path"):
            c.need(getattr(self, key).startswith("/"), key, "must start with /")
        for key in ("success_url", "failure_url"):
            value = getattr(self, key)
            c.need(
                value.startswith(_URL) or not (value or self.hosted),
                key,
                "must be an http:// or https:// URL (required when links.hosted is true)",
            )
        c.done()


@dataclass(frozen=True, slots=True)
class TokensConfig:
    verification_ttl_seconds: int = 86400
    reset_ttl_seconds: int = 3600
    verification_per_user_day: int = 5
    verification_per_ip_hour: int = 20
    reset_per_email_hour: int = 3
    reset_per_ip_hour: int = 3

    def __post_init__(self) -> None:
        c = Checks("tokens")
        for f in dataclasses.fields(self):
            c.positive(getattr(self, f.name), f.name)
        c.done()


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit trail: security events kept in the store, besides their log lines."""

    enabled: bool = True
    retention_days: int = 90

    def __post_init__(self) -> None:
        c = Checks("audit")
        c.need(1 <= self.retention_days <= 3660, "retention_days", "must be 1 to 3660")
        c.done()

    @property
    def retention_ms(self) -> int:
        return self.retention_days * 86_400_000


@dataclass(frozen=True, slots=True)
class ProductConfig:
    name: str = "otpd"
    logo_url: str = ""
    footer: str = "You received this message because of an action on your account."
    support_email: str = ""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Who may read ``/metrics``: callers with the bearer ``token`` (when set), on the API
    listener (``port = 0``) or only on a listener of its own at ``host:port``."""

    token: str = secret()
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        c = Checks("metrics")
        c.need(
            0 <= self.port <= 65535,
            "port",
            "0 (serve /metrics on the API listener) or a port from 1 to 65535",
        )
        c.need(bool(self.host), "host", "must not be empty")
        c.need(
            not self.token or (len(self.token) >= 16 and self.token.strip() == self.token),
            "token",
            "at least 16 characters, no surrounding spaces (make one: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
        c.done()

    @property
    def separate(self) -> bool:
        """Served only on its own listener, not on the API's."""
        return self.port != 0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class TotpConfig:
    """Authenticator-app codes (RFC 6238) and the recovery codes that go with them."""

    digits: int = 6
    period: int = 30
    algorithm: str = "SHA1"
    window: int = 1
    issuer: str = ""  # empty: product.name
    max_failures: int = 5
    lockout_seconds: int = 900

    def __post_init__(self) -> None:
        c = Checks("totp")
        c.need(6 <= self.digits <= 8, "digits", "must be 6 to 8")
        c.need(15 <= self.period <= 300, "period", "must be 15 to 300")
        c.need(
            self.algorithm in ("SHA1", "SHA256", "SHA512"),
            "algorithm",
            "must be SHA1, SHA256 or SHA512",
        )
        c.need(0 <= self.window <= 10, "window", "must be 0 to 10")
        c.need(
            len(self.issuer) <= 100 and ":" not in self.issuer,
            "issuer",
            "at most 100 characters, without ':'",
        )
        c.need(1 <= self.max_failures <= 1000, "max_failures", "must be 1 to 1000")
        c.need(1 <= self.lockout_seconds <= 86400, "lockout_seconds", "must be 1 to 86400")
        c.done()


def _loads_cas(path: str) -> bool:
    try:
        ssl.create_default_context(cafile=path)
    except OSError:  # missing, unreadable or no certificates (ssl.SSLError)
        return False
    return True


_SNS_HOST = r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"
_TOPIC_ARN = re.compile(r"arn:aws(-[a-z]+)*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """What ``POST /webhooks/ses`` accepts: SES reports on these SNS topics, signed by a
    certificate and confirmed at URLs that fully match the patterns (nothing else is
    fetched); ``sns_ca_file`` replaces the system's CAs for those fetches (tests)."""

    sns_topic_arns: tuple[str, ...] = ()
    sns_cert_url_pattern: str = rf"^https://{_SNS_HOST}/SimpleNotificationService-[a-f0-9]+\.pem$"
    sns_subscribe_url_pattern: str = rf"^https://{_SNS_HOST}/\?Action=ConfirmSubscription&[^\s#]*$"
    sns_ca_file: str = ""
    sns_max_age_seconds: int = 3600

    def __post_init__(self) -> None:
        c = Checks("webhooks")
        bad = [arn for arn in self.sns_topic_arns if not _TOPIC_ARN.fullmatch(arn)]
        c.need(not bad, "sns_topic_arns", f"not SNS topic ARNs: {bad}")
        for key in ("sns_cert_url_pattern", "sns_subscribe_url_pattern"):
            try:
                re.compile(getattr(self, key))
            except re.error as exc:
                c.need(False, key, f"not a regular expression ({exc})")
            else:
                c.need(bool(getattr(self, key)), key, "must not be empty")
        c.need(
            not self.sns_ca_file or _loads_cas(self.sns_ca_file),
            "sns_ca_file",
            "must name a PEM file of CA certificates (empty: the system's CAs)",
        )
        c.need(
            60 <= self.sns_max_age_seconds <= 7 * 86400,
            "sns_max_age_seconds",
            "must be 60 to 604800",
        )
        c.done()
