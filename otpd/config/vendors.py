"""Settings of the delivery vendors, and the one table of provider names.

A vendor section is always loaded and checked for its own shape; what a provider needs
to run at all (an API key, a sender) is checked by :meth:`when_used` only when the provider
is listed in ``email.providers`` or ``sms.providers``. A section that talks to the vendor
over HTTP names the URLs it sends to in :meth:`endpoints`, so the rule on them (absolute,
``https://`` in production) lives in one place, :meth:`otpd.config.Config.problems`.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from otpd.config.checks import Checks, Problem, is_web_url, secret
from otpd.webhooks.sendgrid import load_public_key

__all__ = [
    "EMAIL_PROVIDERS",
    "PROVIDERS",
    "SMS_PROVIDERS",
    "MailgunConfig",
    "ProviderSpec",
    "SendgridConfig",
    "SesConfig",
    "SmtpConfig",
    "SnsConfig",
    "TwilioConfig",
    "VonageConfig",
]


# Twilio's own patterns for the SIDs (its OpenAPI description: ``^AC[0-9a-fA-F]{32}$``).
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")


def _required(section: str, provider: str, **values: str) -> Iterator[Problem]:
    for key, value in values.items():
        if not value:
            yield Problem(f"{section}.{key}", f"required when the {provider} provider is used")


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 587
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str = ""
    password: str = secret()
    pool_size: int = 5
    timeout_seconds: float = 10.0
    idle_check_seconds: float = 30.0
    verify_certificate: bool = True
    ca_file: str = ""
    # RFC 2920: MAIL, RCPT and DATA in one write when the relay's EHLO offers PIPELINING
    pipelining: bool = True

    def __post_init__(self) -> None:
        c = Checks("smtp")
        c.need(1 <= self.port <= 65535, "port", "must be between 1 and 65535")
        c.need(1 <= self.pool_size <= 100, "pool_size", "must be 1 to 100")
        c.positive(self.timeout_seconds, "timeout_seconds")
        c.need(self.idle_check_seconds >= 0, "idle_check_seconds", "must be >= 0")
        c.need(bool(self.password) <= bool(self.username), "password", "needs smtp.username")
        c.done()

    def when_used(self) -> Iterator[Problem]:
        if self.tls != "none" and self.ca_file:
            try:
                ssl.create_default_context().load_verify_locations(cafile=self.ca_file)
            except OSError as exc:  # ssl.SSLError is an OSError too
                yield Problem(
                    "smtp.ca_file", f"cannot load {self.ca_file!r} ({type(exc).__name__})"
                )


def _credential_pair(c: Checks, key_id: str, key_secret: str) -> None:
    c.need(
        bool(key_id) == bool(key_secret),
        "secret_access_key" if key_id else "access_key_id",
        "set both access_key_id and secret_access_key, or neither (the AWS chain)",
    )


@dataclass(frozen=True, slots=True)
class SesConfig:
    region: str = "us-east-1"
    endpoint_url: str = ""
    configuration_set: str = ""
    access_key_id: str = secret()
    secret_access_key: str = secret()

    def __post_init__(self) -> None:
        c = Checks("ses")
        _credential_pair(c, self.access_key_id, self.secret_access_key)
        c.done()

    def endpoints(self) -> Iterator[tuple[str, str]]:
        if self.endpoint_url:  # empty: the AWS regional endpoint, always https
            yield "endpoint_url", self.endpoint_url


@dataclass(frozen=True, slots=True)
class SendgridConfig:
    api_key: str = secret()
    base_url: str = "https://api.sendgrid.com"
    # Event Webhook verification key (base64 DER as SendGrid shows it, or PEM); empty
    # refuses every webhook
    webhook_public_key: str = ""

    def __post_init__(self) -> None:
        c = Checks("sendgrid")
        if self.webhook_public_key:
            try:
                load_public_key(self.webhook_public_key)
            except ValueError as exc:
                c.need(False, "webhook_public_key", str(exc))
        c.done()

    def when_used(self) -> Iterator[Problem]:
        yield from _required("sendgrid", "sendgrid", api_key=self.api_key)

    def endpoints(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


@dataclass(frozen=True, slots=True)
class MailgunConfig:
    api_key: str = secret()
    domain: str = ""
    region: Literal["us", "eu"] = "us"
    base_url: str = ""
    webhook_signing_key: str = secret()  # empty refuses every webhook

    @property
    def effective_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return "https://api.eu.mailgun.net" if self.region == "eu" else "https://api.mailgun.net"

    def when_used(self) -> Iterator[Problem]:
        yield from _required("mailgun", "mailgun", api_key=self.api_key, domain=self.domain)

    def endpoints(self) -> Iterator[tuple[str, str]]:
        if self.base_url:  # empty: the region's API, always https
            yield "base_url", self.base_url


@dataclass(frozen=True, slots=True)
class SnsConfig:
    region: str = "us-east-1"
    endpoint_url: str = ""
    sender_id: str = ""
    access_key_id: str = secret()
    secret_access_key: str = secret()

    def __post_init__(self) -> None:
        c = Checks("sns")
        _credential_pair(c, self.access_key_id, self.secret_access_key)
        c.need(
            not self.sender_id or re.fullmatch(r"[A-Za-z0-9]{1,11}", self.sender_id) is not None,
            "sender_id",
            "1 to 11 letters or digits",
        )
        c.done()

    def endpoints(self) -> Iterator[tuple[str, str]]:
        if self.endpoint_url:  # empty: the AWS regional endpoint, always https
            yield "endpoint_url", self.endpoint_url


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    account_sid: str = ""
    auth_token: str = secret()
    from_number: str = ""
    messaging_service_sid: str = ""
    status_callback: str = ""
    base_url: str = "https://api.twilio.com"

    def when_used(self) -> Iterator[Problem]:
        # a malformed SID or callback would fail every message, so start-up refuses it
        yield from _required(
            "twilio", "twilio", account_sid=self.account_sid, auth_token=self.auth_token
        )
        if self.account_sid and not _ACCOUNT_SID.fullmatch(self.account_sid):
            yield Problem("twilio.account_sid", "must be AC followed by 32 hex digits")
        if not (self.from_number or self.messaging_service_sid):
            yield Problem("twilio.from_number", "set it or twilio.messaging_service_sid")
        if self.messaging_service_sid and not _SERVICE_SID.fullmatch(self.messaging_service_sid):
            yield Problem("twilio.messaging_service_sid", "must be MG followed by 32 hex digits")
        if self.status_callback and not is_web_url(self.status_callback, allow_http=False):
            yield Problem("twilio.status_callback", "must be an absolute https:// URL")

    def endpoints(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


@dataclass(frozen=True, slots=True)
class VonageConfig:
    api_key: str = ""
    api_secret: str = secret()
    from_: str = field(default="otpd", metadata={"key": "from"})
    base_url: str = "https://rest.nexmo.com"
    signature_secret: str = secret()  # empty refuses every delivery receipt
    # the dashboard's "signature method"; "md5hash" is Vonage's default
    signature_method: Literal["md5hash", "md5", "sha1", "sha256", "sha512"] = "md5hash"

    def when_used(self) -> Iterator[Problem]:
        yield from _required("vonage", "vonage", api_key=self.api_key, api_secret=self.api_secret)

    def endpoints(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


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
