"""The registry: every name in ``otpd.config.PROVIDERS`` builds its provider class."""

from __future__ import annotations

import pytest

from otpd.clock import FakeClock
from otpd.config import PROVIDERS, ProviderSpec, load_config
from otpd.models import Channel
from otpd.providers.base import Provider, ProviderDeps
from otpd.providers.registry import provider_class
from otpd.providers.session import SharedSession
from tests.fakes import ScriptedProvider
from tests.providers.helpers import build_from_config

SPECS = list(PROVIDERS.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_spec_names_an_importable_provider_of_its_name_and_channel(
    spec: ProviderSpec,
) -> None:
    cls = provider_class(spec)
    assert issubclass(cls, Provider)
    assert cls.name == spec.name
    assert cls.channel.value == spec.channel


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_provider_builds_itself_from_config(spec: ProviderSpec) -> None:
    config = load_config(data={}, env={})
    deps = ProviderDeps(http=SharedSession(), clock=FakeClock())
    provider = provider_class(spec).from_config(config, deps)
    assert type(provider) is provider_class(spec)


def test_providers_are_built_in_the_configured_order() -> None:
    data = {
        "sms": {"providers": ["vonage", "console", "twilio"]},
        "vonage": {"api_key": "k1", "api_secret": "s3cret"},
        "twilio": {
            "account_sid": "AC" + "0" * 32,
            "auth_token": "tok",
            "from_number": "+14155550100",
        },
    }
    assert [p.name for p in build_from_config(Channel.SMS, data)] == [
        "vonage",
        "console",
        "twilio",
    ]


@pytest.mark.parametrize(
    "spec",
    [
        ProviderSpec("outbox", "sms", "outbox", "otpd.providers.dev:OutboxEmailProvider"),
        ProviderSpec("console", "sms", "outbox", "otpd.providers.dev:OutboxEmailProvider"),
        ProviderSpec("mime", "email", "email", "otpd.providers.mime:build_email"),
        ProviderSpec("nothing", "email", "email", "otpd.providers.dev:NoSuchProvider"),
    ],
    ids=["wrong-channel", "wrong-name", "not-a-class", "missing"],
)
def test_a_target_that_is_not_the_named_provider_is_refused(spec: ProviderSpec) -> None:
    with pytest.raises(TypeError, match=spec.name):
        provider_class(spec)


def test_a_provider_without_from_config_cannot_be_built_from_config() -> None:
    config = load_config(data={}, env={})
    with pytest.raises(NotImplementedError, match="ScriptedProvider"):
        ScriptedProvider.from_config(config, ProviderDeps(SharedSession(), FakeClock()))
