"""Provider names in config -> provider objects, through the one table in
:data:`otpd.config.PROVIDERS`. Each class is imported only when configured, so the dev
daemon does not pay for SDKs it does not use."""

from __future__ import annotations

import importlib

from otpd.config import PROVIDERS, Config, ProviderSpec
from otpd.models import Channel
from otpd.providers.base import Provider, ProviderDeps

# ProviderDeps is re-exported: it is what build_providers takes, next to the config.
__all__ = ["ProviderDeps", "build_providers", "provider_class"]


def provider_class(spec: ProviderSpec) -> type[Provider]:
    """Import the class ``spec.target`` (``module:Class``) names, checking that it is a
    :class:`Provider` of the spec's name and channel."""
    module_name, _, class_name = spec.target.partition(":")
    found = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(found, type) and issubclass(found, Provider)):
        raise TypeError(f"provider {spec.name!r}: {spec.target} is not a Provider class")
    if found.name != spec.name or found.channel.value != spec.channel:
        raise TypeError(
            f"provider {spec.name!r}: {spec.target} is the {found.channel.value} provider "
            f"{found.name!r}, not the {spec.channel} provider {spec.name!r}"
        )
    return found


def build_providers(channel: Channel, config: Config, deps: ProviderDeps) -> list[Provider]:
    """The providers of ``channel`` in the configured chain order."""
    names = config.email.providers if channel is Channel.EMAIL else config.sms.providers
    providers: list[Provider] = []
    for name in names:
        spec = PROVIDERS.get(name)
        if spec is None or spec.channel != channel.value:
            # config validation rejects these names; this guards configs built around it
            raise ValueError(f"{name!r} is not a known {channel.value} provider")
        providers.append(provider_class(spec).from_config(config, deps))
    return providers
