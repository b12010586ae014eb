"""The whole configuration, and the rules that span sections (production, exposure,
what each configured provider needs). Everything ``otpd serve`` refuses is refused here."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from otpd.config.checks import Problem, is_loopback, is_web_url, raise_problems
from otpd.config.sections import (
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
    PROVIDERS,
    MailgunConfig,
    SendgridConfig,
    SesConfig,
    SmtpConfig,
    SnsConfig,
    TwilioConfig,
    VonageConfig,
)

__all__ = ["Config", "exposure_problem", "metrics_exposure_problem"]


def exposure_problem(host: str, has_keys: bool) -> Problem | None:
    """Without API keys otpd serves only on loopback: the one place this rule lives."""
    if has_keys or is_loopback(host):
        return None
    return Problem(
        "auth.keys",
        "no API keys configured; without keys otpd serves only on a loopback address "
        f"(server.host is {host!r})",
    )


def metrics_exposure_problem(config: Config, api_host: str) -> Problem | None:
    """In production ``/metrics`` without ``metrics.token`` is served on loopback only
    (``api_host``: where the API listens, as it serves ``/metrics`` unless
    ``metrics.port`` gives it a listener of its own)."""
    metrics = config.metrics
    if config.server.env != "production" or metrics.token:
        return None
    key, host = ("metrics.host", metrics.host) if metrics.separate else ("server.host", api_host)
    if is_loopback(host):
        return None
    return Problem(
        "metrics.token",
        f"production serves /metrics on a non-loopback address ({key} is {host!r}) only "
        "with a token: set metrics.token, or metrics.port with a loopback metrics.host",
    )


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
    audit: AuditConfig = field(default_factory=AuditConfig)
    product: ProductConfig = field(default_factory=ProductConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    totp: TotpConfig = field(default_factory=TotpConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)

    def __post_init__(self) -> None:
        raise_problems(self.problems())

    def problems(self) -> Iterator[Problem]:
        """Every rule that spans sections, in the order an operator would fix them."""
        if self.server.env == "production":
            yield from self._production()
        logo = self.product.logo_url
        if logo and not is_web_url(logo, allow_http=self.server.env != "production"):
            yield Problem(
                "product.logo_url",
                "must be an absolute https:// URL"
                + (" (or http:// in dev)" if self.server.env != "production" else ""),
            )
        longest = self.longest_delivery_seconds()
        durable = self.dispatch.durable and self.store.backend == "redis"
        if durable and self.dispatch.claim_idle_seconds <= longest:
            yield Problem(
                "dispatch.claim_idle_seconds",
                f"must exceed the longest pass through a provider chain ({longest:g} s: "
                "dispatch.provider_timeout_seconds times the providers of the longest "
                "chain), or a slow delivery is claimed and sent again by another daemon",
            )
        exposed = exposure_problem(self.server.host, bool(self.auth.keys))
        if exposed is not None:
            yield exposed
        exposed = metrics_exposure_problem(self, self.server.host)
        if exposed is not None:
            yield exposed
        if self.metrics.separate and self.metrics.port == self.server.port:
            yield Problem("metrics.port", "must differ from server.port")
        for name in (*self.email.providers, *self.sms.providers):
            if name not in PROVIDERS:
                continue  # reported by the section itself
            spec = PROVIDERS[name]
            section = getattr(self, spec.section)
            when_used = getattr(section, "when_used", None)
            if when_used is not None:
                yield from when_used()
            endpoints = getattr(section, "endpoints", None)
            if endpoints is not None:
                yield from self._endpoint_problems(spec.section, endpoints())

    def _endpoint_problems(
        self, section: str, endpoints: Iterable[tuple[str, str]]
    ) -> Iterator[Problem]:
        """A vendor URL otpd sends API keys to: absolute, and ``https://`` in production,
        where ``http://`` would put the key on the wire in clear."""
        production = self.server.env == "production"
        for key, url in endpoints:
            if not is_web_url(url, allow_http=True):
                dev = "" if production else " (or http:// in dev)"
                yield Problem(f"{section}.{key}", f"must be an absolute https:// URL{dev}")
            elif production and not is_web_url(url, allow_http=False):
                yield Problem(f"{section}.{key}", "must be https:// in production")

    def longest_delivery_seconds(self) -> float:
        """The longest one pass through a provider chain can take (each provider call is
        bounded by ``dispatch.provider_timeout_seconds``)."""
        longest = max(len(self.email.providers), len(self.sms.providers), 1)
        return longest * self.dispatch.provider_timeout_seconds

    def _production(self) -> Iterator[Problem]:
        def need(ok: bool, key: str, text: str) -> Iterator[Problem]:
            if not ok:
                yield Problem(key, text)

        yield from need(
            bool(self.security.secret_key), "security.secret_key", "required in production"
        )
        yield from need(bool(self.auth.keys), "auth.keys", "production needs at least one API key")
        yield from need(self.store.backend != "memory", "store.backend", "production needs redis")
        yield from need(
            bool(self.security.encryption_keys),
            "security.encryption_keys",
            "production needs at least one key (queued messages and secrets are "
            "encrypted with it at rest)",
        )
        yield from need(
            self.links.base_url.startswith("https://"),
            "links.base_url",
            "must be https:// in production",
        )
        for key in ("success_url", "failure_url"):
            url = getattr(self.links, key)
            yield from need(
                not url or url.startswith("https://"), f"links.{key}", "https:// in production"
            )
        yield from need(
            "outbox" not in self.email.providers, "email.providers", "no outbox in production"
        )
        yield from need(
            "console" not in self.sms.providers, "sms.providers", "no console in production"
        )
        yield from need(
            not self.otp.test_recipients or self.otp.allow_test_recipients_in_production,
            "otp.test_recipients",
            "refused in production unless otp.allow_test_recipients_in_production = true "
            "(their codes are fixed)",
        )

    def with_overrides(self, **sections: Any) -> Config:
        """A copy with some sections replaced by keyword: ``cfg.with_overrides(otp=...)``."""
        return dataclasses.replace(self, **sections)
