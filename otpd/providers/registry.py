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


EMAIL_FACTORIES: dict[str, Factory] = {
    "outbox": _outbox,
}

SMS_FACTORIES: dict[str, Factory] = {
    "console": _console,
}


def build_providers(channel: Channel, config: Config, deps: ProviderDeps) -> list[Provider]:
    """The providers of ``channel`` in the configured chain order."""
    names = config.email.providers if channel is Channel.EMAIL else config.sms.providers
    factories = EMAIL_FACTORIES if channel is Channel.EMAIL else SMS_FACTORIES
    missing = [n for n in names if n not in factories]
    if missing:
        raise NotImplementedError(f"{channel} providers not available in this build: {missing}")
    return [factories[name](config, deps) for name in names]
