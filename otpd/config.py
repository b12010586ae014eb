"""Configuration: one frozen dataclass per TOML section, loaded and validated once.

Every key can be overridden by an environment variable ``OTPD_<SECTION>__<KEY>``; values
of strings are taken as they are, everything else is parsed as JSON (``9000``, ``true``,
``["outbox"]``, ``[{"name": "web", "sha256": "..."}]``). ``OTPD_SECRET_KEY`` is a short
alias for ``OTPD_SECURITY__SECRET_KEY``. Invalid config fails with one message naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from otpd.errors import ConfigError

__all__ = [
    "PROVIDERS",
    "ApiKey",
    "AuthConfig",
    "BreakerConfig",
    "Config",
    "DispatchConfig",
    "EmailConfig",
    "LinksConfig",
    "LoggingConfig",
    "MailgunConfig",
    "OtpConfig",
    "OutboxConfig",
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
    "TwilioConfig",
    "VonageConfig",
    "is_loopback",
    "load_config",
    "masked_config",
]

@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A delivery provider as config names it: its channel, its settings section, and the
    class that implements it (``module:Class``, imported only when configured)."""

    name: str
    channel: Literal["email", "sms"]
    section: str
    target: str


# The one definition of every provider name.
PROVIDERS: Mapping[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec("outbox", "email", "outbox", "otpd.providers.dev:OutboxEmailProvider"),
        ProviderSpec("smtp", "email", "smtp", "otpd.providers.smtp:SmtpProvider"),
        ProviderSpec("ses", "email", "ses", "otpd.providers.ses:SesProvider"),
        ProviderSpec("sendgrid", "email", "sendgrid", "otpd.providers.sendgrid:SendgridProvider"),
        ProviderSpec("mailgun", "email", "mailgun", "otpd.providers.mailgun:MailgunProvider"),
        ProviderSpec("console", "sms", "outbox", "otpd.providers.dev:ConsoleSmsProvider"),
        ProviderSpec("sns", "sms", "sns", "otpd.providers.sns:SnsProvider"),
        ProviderSpec("twilio", "sms", "twilio", "otpd.providers.twilio:TwilioProvider"),
        ProviderSpec("vonage", "sms", "vonage", "otpd.providers.vonage:VonageProvider"),
    )
}
EMAIL_PROVIDERS = frozenset(n for n, s in PROVIDERS.items() if s.channel == "email")
SMS_PROVIDERS = frozenset(n for n, s in PROVIDERS.items() if s.channel == "sms")


def _secret() -> Any:
    return field(default="", metadata={"secret": True})


def _need(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}", details={"key": key})


def _positive(value: float, key: str) -> None:
    _need(value > 0, key, "must be greater than 0")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    env: Literal["dev", "production"] = "dev"
    max_body_bytes: int = 65536

    def __post_init__(self) -> None:
        _need(0 <= self.port <= 65535, "server.port", "must be between 0 and 65535")
        _need(1024 <= self.max_body_bytes <= 1 << 20, "server.max_body_bytes", "1 KiB to 1 MiB")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "otpd:"
    max_connections: int = 50
    pool_timeout_seconds: float = 2.0
    socket_timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        _need(
            self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "store.redis_url",
            "must start with redis://, rediss:// or unix://",
        )
        _need(
            re.fullmatch(r"[A-Za-z0-9:_.\-]{0,64}", self.key_prefix) is not None,
            "store.key_prefix",
            "letters, digits and : _ . - only, at most 64",
        )
        _positive(self.max_connections, "store.max_connections")
        _positive(self.pool_timeout_seconds, "store.pool_timeout_seconds")
        _positive(self.socket_timeout_seconds, "store.socket_timeout_seconds")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    secret_key: str = _secret()

    def __post_init__(self) -> None:
        _need(
            not self.secret_key or len(self.secret_key) >= 32,
            "security.secret_key",
            "must be at least 32 characters (make one: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))')",
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A caller's API key, stored as the SHA-256 hex digest of the key."""

    name: str
    sha256: str

    def __post_init__(self) -> None:
        _need(bool(self.name), "auth.keys.name", "must not be empty")
        _need(
            re.fullmatch(r"[0-9a-f]{64}", self.sha256) is not None,
            "auth.keys.sha256",
            f"key {self.name!r}: must be 64 lowercase hex characters",
        )


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

    def __post_init__(self) -> None:
        _need(4 <= self.length <= 10, "otp.length", "must be between 4 and 10")
        _need(30 <= self.ttl_seconds <= 86400, "otp.ttl_seconds", "must be 30 to 86400")
        _need(1 <= self.max_attempts <= 20, "otp.max_attempts", "must be 1 to 20")
        for key in ("per_user_hour", "per_user_day", "per_ip_hour"):
            _positive(getattr(self, key), f"otp.{key}")


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    workers: int = 4
    queue_size: int = 10000
    max_attempts: int = 5
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    drain_timeout_seconds: float = 10.0
    task_ttl_seconds: int = 7 * 86400

    def __post_init__(self) -> None:
        _need(1 <= self.workers <= 256, "dispatch.workers", "must be 1 to 256")
        _positive(self.queue_size, "dispatch.queue_size")
        _need(1 <= self.max_attempts <= 50, "dispatch.max_attempts", "must be 1 to 50")
        _positive(self.backoff_base_seconds, "dispatch.backoff_base_seconds")
        _need(
            self.backoff_max_seconds >= self.backoff_base_seconds,
            "dispatch.backoff_max_seconds",
            "must be >= dispatch.backoff_base_seconds",
        )
        _need(self.drain_timeout_seconds >= 0, "dispatch.drain_timeout_seconds", "must be >= 0")
        _positive(self.task_ttl_seconds, "dispatch.task_ttl_seconds")


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    dir: str = "var/outbox"

    def __post_init__(self) -> None:
        _need(bool(self.dir), "outbox.dir", "must not be empty")


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
        _need(bool(self.providers), "email.providers", "must name at least one provider")
        unknown = sorted(set(self.providers) - EMAIL_PROVIDERS)
        _need(not unknown, "email.providers", f"unknown {unknown}; known {sorted(EMAIL_PROVIDERS)}")
        _need(len(set(self.providers)) == len(self.providers), "email.providers", "duplicates")
        _need("@" in self.from_address, "email.from_address", "must be an email address")
        _positive(self.per_recipient_hour, "email.per_recipient_hour")
        _positive(self.global_hour, "email.global_hour")


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

    def __post_init__(self) -> None:
        _need(bool(self.providers), "sms.providers", "must name at least one provider")
        unknown = sorted(set(self.providers) - SMS_PROVIDERS)
        _need(not unknown, "sms.providers", f"unknown {unknown}; known {sorted(SMS_PROVIDERS)}")
        _need(len(set(self.providers)) == len(self.providers), "sms.providers", "duplicates")
        for code in (*self.allowed_countries, *self.prices):
            _need(
                re.fullmatch(r"[A-Z]{2}", code) is not None,
                "sms.allowed_countries" if code in self.allowed_countries else "sms.prices",
                f"{code!r} is not an ISO 3166-1 alpha-2 code (upper case)",
            )
        for prefix in self.blocked_prefixes:
            _need(
                re.fullmatch(r"\+\d{1,14}", prefix) is not None,
                "sms.blocked_prefixes",
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
            _positive(getattr(self, key), f"sms.{key}")
        _need(4 <= self.prefix_digits <= 14, "sms.prefix_digits", "must be 4 to 14")
        _need(self.daily_budget >= 0, "sms.daily_budget", "must be >= 0 (0 disables it)")
        _need(self.default_price >= 0, "sms.default_price", "must be >= 0")
        _need(all(p >= 0 for p in self.prices.values()), "sms.prices", "must be >= 0")


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 587
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str = ""
    password: str = _secret()
    pool_size: int = 5
    timeout_seconds: float = 10.0
    idle_check_seconds: float = 30.0
    verify_certificate: bool = True
    ca_file: str = ""

    def __post_init__(self) -> None:
        _need(1 <= self.port <= 65535, "smtp.port", "must be between 1 and 65535")
        _need(1 <= self.pool_size <= 100, "smtp.pool_size", "must be 1 to 100")
        _positive(self.timeout_seconds, "smtp.timeout_seconds")
        _need(self.idle_check_seconds >= 0, "smtp.idle_check_seconds", "must be >= 0")
        _need(bool(self.password) <= bool(self.username), "smtp.password", "needs smtp.username")


def _credential_pair(section: str, key_id: str, secret: str) -> None:
    _need(
        bool(key_id) == bool(secret),
        f"{section}.{'secret_access_key' if key_id else 'access_key_id'}",
        "set both access_key_id and secret_access_key, or neither (the AWS chain)",
    )


@dataclass(frozen=True, slots=True)
class SesConfig:
    region: str = "us-east-1"
    endpoint_url: str = ""
    configuration_set: str = ""
    access_key_id: str = _secret()
    secret_access_key: str = _secret()

    def __post_init__(self) -> None:
        _credential_pair("ses", self.access_key_id, self.secret_access_key)


@dataclass(frozen=True, slots=True)
class SendgridConfig:
    api_key: str = _secret()
    base_url: str = "https://api.sendgrid.com"


@dataclass(frozen=True, slots=True)
class MailgunConfig:
    api_key: str = _secret()
    domain: str = ""
    region: Literal["us", "eu"] = "us"
    base_url: str = ""

    @property
    def effective_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return "https://api.eu.mailgun.net" if self.region == "eu" else "https://api.mailgun.net"


@dataclass(frozen=True, slots=True)
class SnsConfig:
    region: str = "us-east-1"
    endpoint_url: str = ""
    sender_id: str = ""
    access_key_id: str = _secret()
    secret_access_key: str = _secret()

    def __post_init__(self) -> None:
        _credential_pair("sns", self.access_key_id, self.secret_access_key)
        _need(
            not self.sender_id or re.fullmatch(r"[A-Za-z0-9]{1,11}", self.sender_id) is not None,
            "sns.sender_id",
            "1 to 11 letters or digits",
        )


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    account_sid: str = ""
    auth_token: str = _secret()
    from_number: str = ""
    messaging_service_sid: str = ""
    status_callback: str = ""


@dataclass(frozen=True, slots=True)
class VonageConfig:
    api_key: str = ""
    api_secret: str = _secret()
    from_: str = field(default="otpd", metadata={"key": "from"})
    base_url: str = "https://rest.nexmo.com"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    recovery_seconds: float = 60.0
    success_threshold: int = 2

    def __post_init__(self) -> None:
        _positive(self.failure_threshold, "breaker.failure_threshold")
        _positive(self.recovery_seconds, "breaker.recovery_seconds")
        _positive(self.success_threshold, "breaker.success_threshold")


@dataclass(frozen=True, slots=True)
class LinksConfig:
    base_url: str = "http://127.0.0.1:8080"
    verify_email_path: str = "/verify-email"
    reset_password_path: str = "/reset-password"
    hosted: bool = False
    success_url: str = ""
    failure_url: str = ""

    def __post_init__(self) -> None:
        _need(
            self.base_url.startswith(("http://", "https://")),
            "links.base_url",
            "must be an http:// or https:// URL",
        )
        for key in ("verify_email_path", "reset_password_path"):
            _need(getattr(self, key).startswith("/"), f"links.{key}", "must start with /")
        for key in ("success_url", "failure_url"):
            value = getattr(self, key)
            _need(
                value.startswith(("http://", "https://")) or not (value or self.hosted),
                f"links.{key}",
                "must be an http:// or https:// URL (required when links.hosted is true)",
            )


@dataclass(frozen=True, slots=True)
class TokensConfig:
    verification_ttl_seconds: int = 86400
    reset_ttl_seconds: int = 3600
    verification_per_user_day: int = 5
    verification_per_ip_hour: int = 20
    reset_per_email_hour: int = 3
    reset_per_ip_hour: int = 3

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _positive(getattr(self, f.name), f"tokens.{f.name}")


@dataclass(frozen=True, slots=True)
class ProductConfig:
    name: str = "otpd"
    logo_url: str = ""
    footer: str = "You received this message because of an action on your account."
    support_email: str = ""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole effective configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    otp: OtpConfig = field(default_factory=OtpConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    ses: SesConfig = field(default_factory=SesConfig)
    sendgrid: SendgridConfig = field(default_factory=SendgridConfig)
    mailgun: MailgunConfig = field(default_factory=MailgunConfig)
    sns: SnsConfig = field(default_factory=SnsConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    vonage: VonageConfig = field(default_factory=VonageConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    product: ProductConfig = field(default_factory=ProductConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.server.env == "production":
            self._check_production()
        if not self.auth.keys and not is_loopback(self.server.host):
            raise ConfigError(
                "auth.keys: no API keys configured; without keys otpd serves only on a "
                "loopback address (server.host is " + repr(self.server.host) + ")",
                details={"key": "auth.keys"},
            )

    def _check_production(self) -> None:
        _need(bool(self.security.secret_key), "security.secret_key", "required in production")
        _need(bool(self.auth.keys), "auth.keys", "production needs at least one API key")
        _need(self.store.backend != "memory", "store.backend", "production needs redis")
        _need(
            self.links.base_url.startswith("https://"),
            "links.base_url",
            "must be https:// in production",
        )
        for key in ("success_url", "failure_url"):
            url = getattr(self.links, key)
            _need(not url or url.startswith("https://"), f"links.{key}", "https:// in production")
        _need("outbox" not in self.email.providers, "email.providers", "no outbox in production")
        _need("console" not in self.sms.providers, "sms.providers", "no console in production")

    def with_overrides(self, **sections: Any) -> Config:
        """A copy with some sections replaced by keyword: ``cfg.with_overrides(otp=...)``."""
        return dataclasses.replace(self, **sections)


# ---------------------------------------------------------------- loading


def _toml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        _need(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        _need(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        _need(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"must be an integer, got {value!r}",
        )
        return value
    if tp is float:
        _need(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"must be a number, got {value!r}",
        )
        return float(value)
    if tp is str:
        _need(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    if origin is tuple:
        _need(isinstance(value, list | tuple), key, f"must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _need(isinstance(value, dict), key, f"must be a table, got {value!r}")
        return {
            _coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        _need(isinstance(value, dict), key, f"must be a table, got {value!r}")
        return _build(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {_toml_key(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})",
            details={"key": f"{prefix}.{unknown[0]}"},
        )
    kwargs = {
        f.name: _coerce(data[k], hints[f.name], f"{prefix}.{k}")
        for k, f in fields.items()
        if k in data
    }
    return cls(**kwargs)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    hints = typing.get_type_hints(Config)
    out: dict[str, dict[str, Any]] = {}
    if "OTPD_SECRET_KEY" in env:
        out.setdefault("security", {})["secret_key"] = env["OTPD_SECRET_KEY"]
    for name, raw in env.items():
        if not name.startswith("OTPD_") or "__" not in name:
            continue
        section, _, key = name[5:].lower().partition("__")
        if section not in hints:
            raise ConfigError(f"{name}: unknown config section {section!r}")
        fields = {_toml_key(f): f for f in dataclasses.fields(hints[section])}
        if key not in fields:
            raise ConfigError(f"{name}: unknown key {section}.{key}")
        tp = typing.get_type_hints(hints[section])[fields[key].name]
        value: Any = raw
        if tp is not str and typing.get_origin(tp) is not Literal:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name}: not valid JSON ({exc.msg})") from exc
        out.setdefault(section, {})[key] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> Config:
    """Load ``path`` (TOML), apply ``OTPD_*`` environment overrides and validate.

    ``path=None`` reads ``OTPD_CONFIG`` or else ``./config.toml`` if it exists; ``data`` is
    used instead of a file when given (embedding, tests).
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if data is not None:
        for name, value in data.items():
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: must be a table", details={"key": name})
        raw = {k: dict(v) for k, v in data.items()}
    else:
        explicit = path is not None or "OTPD_CONFIG" in env
        file = Path(path if path is not None else env.get("OTPD_CONFIG", "config.toml"))
        if file.exists():
            try:
                raw = tomllib.loads(file.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{file}: not valid TOML ({exc})") from exc
        elif explicit:
            raise ConfigError(f"{file}: config file not found")
    for section, values in _env_overrides(env).items():
        raw.setdefault(section, {}).update(values)
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config section", details={"key": unknown[0]})
    sections = {}
    for name, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a table", details={"key": name})
        sections[name] = _build(hints[name], value, name)
    return Config(**sections)


def masked_config(config: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret masked."""

    def dump(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                secret = f.metadata.get("secret")
                out[_toml_key(f)] = ("********" if value else "") if secret else dump(value)
            return out
        if isinstance(obj, tuple):
            return [dump(v) for v in obj]
        if isinstance(obj, dict):
            return {k: dump(v) for k, v in obj.items()}
        return obj

    result: dict[str, Any] = dump(config)
    return result
