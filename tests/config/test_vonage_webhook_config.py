"""The Vonage webhook keys: the signature secret is masked, the method is one of Vonage's."""

from __future__ import annotations

import typing

import pytest

from otpd.config import VonageConfig, load_config, masked_config
from otpd.errors import ConfigError
from otpd.webhooks.vonage import SIGNATURE_METHODS


def test_the_signature_method_defaults_to_vonages_default_and_the_secret_to_refusal() -> None:
    config = load_config(env={}, data={})
    assert (config.vonage.signature_method, config.vonage.signature_secret) == ("md5hash", "")


def test_an_unknown_signature_method_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"vonage\.signature_method"):
        load_config(env={}, data={"vonage": {"signature_method": "sha384"}})


def test_the_signature_secret_comes_from_the_environment_and_is_masked() -> None:
    env = {
        "OTPD_VONAGE__SIGNATURE_SECRET": "s3cret-value",
        "OTPD_VONAGE__SIGNATURE_METHOD": "sha512",
    }
    config = load_config(env=env, data={})
    assert (config.vonage.signature_secret, config.vonage.signature_method) == (
        "s3cret-value",
        "sha512",
    )
    assert "s3cret-value" not in str(masked_config(config))


def test_config_offers_exactly_the_methods_the_verifier_implements() -> None:
    hint = typing.get_type_hints(VonageConfig)["signature_method"]
    assert typing.get_args(hint) == SIGNATURE_METHODS
