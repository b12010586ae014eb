"""Provider names in config -> provider objects. Real providers are imported lazily so
the dev daemon does not pay for SDKs it does not use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from otpd.clock import Clock
from otpd.config import Config
from otpd.models import Channel
from otpd.providers.base import Provider
from otpd.providers.http import SharedSession

__all__ = ["ProviderDeps", "build_providers"]


@dataclass(frozen=True, slots=True)
class ProviderDeps:
    """Shared resources a provider may use; opened by the daemon before the chains."""

    http: SharedSession
    clock: Clock


Factory = Callable[[Config, ProviderDeps], Provider]


def _outbox(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.outbox import OutboxEmailProvider

    return OutboxEmailProvider(config.outbox.dir, config.email)


def _console(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.outbox import ConsoleSmsProvider

    return ConsoleSmsProvider(config.outbox.dir)


def _smtp(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.smtp import SmtpProvider

    return SmtpProvider(config.smtp, config.email, deps.clock)


def _ses(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.ses import SesProvider

    return SesProvider(config.ses, config.email)


def _sns(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.sns import SnsProvider

    return SnsProvider(config.sns)


def _sendgrid(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.sendgrid import SendgridProvider

    return SendgridProvider(config.sendgrid, config.email, deps.http)


def _mailgun(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.mailgun import MailgunProvider

    return MailgunProvider(config.mailgun, config.email, deps.http)


def _twilio(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.twilio import TwilioProvider

    return TwilioProvider(config.twilio, deps.http)


def _vonage(config: Config, deps: ProviderDeps) -> Provider:
    from otpd.providers.vonage import VonageProvider

    return VonageProvider(config.vonage, deps.http)


EMAIL_FACTORIES: dict[str, Factory] = {
    "outbox": _outbox,
    "smtp": _smtp,
    "ses": _ses,
    "sendgrid": _sendgrid,
    "mailgun": _mailgun,
}

SMS_FACTORIES: dict[str, Factory] = {
    "console": _console,
    "sns": _sns,
    "twilio": _twilio,
    "vonage": _vonage,
}


def build_providers(channel: Channel, config: Config, deps: ProviderDeps) -> list[Provider]:
    """The providers of ``channel`` in the configured chain order."""
    names = config.email.providers if channel is Channel.EMAIL else config.sms.providers
    factories = EMAIL_FACTORIES if channel is Channel.EMAIL else SMS_FACTORIES
    missing = [n for n in names if n not in factories]
    if missing:
        raise NotImplementedError(f"{channel} providers not available in this build: {missing}")
    return [factories[name](config, deps) for name in names]
