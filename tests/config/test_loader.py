"""Config: defaults, the checked-in file, environment overrides, validation, masking."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from otpd.config import ApiKey, Config, load_config, masked_config
from otpd.crypto import api_key_digest
from otpd.errors import ConfigError

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.toml"
SECRET = "x" * 40
DIGEST = api_key_digest("some-api-key")


def sections() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def secret_fields() -> set[tuple[str, str]]:
    return {
        (name, f.name)
        for name, cls in sections().items()
        for f in dataclasses.fields(cls)
        if f.metadata.get("secret")
    }


def config_error(**kwargs: Any) -> str:
    kwargs.setdefault("env", {})
    if "path" not in kwargs:
        kwargs.setdefault("data", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert message == info.value.message
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- defaults and the file


def test_defaults_are_the_dev_setup() -> None:
    config = load_config(data={}, env={})
    assert config == Config()
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.env == "dev"
    assert config.server.max_body_bytes == 65536
    assert config.store.backend == "memory"
    assert config.security.secret_key == ""
    assert config.auth.keys == ()
    assert (config.otp.length, config.otp.ttl_seconds, config.otp.max_attempts) == (6, 600, 3)
    assert (config.otp.per_user_hour, config.otp.per_user_day) == (5, 10)
    assert config.email.providers == ("outbox",)
    assert config.sms.providers == ("console",)


def test_checked_in_config_toml_equals_the_defaults() -> None:
    config = load_config(REPO_CONFIG, env={})
    assert config.store.backend == "memory"
    assert config.email.providers == ("outbox",)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config == Config()


def test_checked_in_config_toml_documents_every_key() -> None:
    import tomllib

    raw = tomllib.loads(REPO_CONFIG.read_text())
    for name, cls in sections().items():
        assert name in raw, f"[{name}] missing from config.toml"
        keys = {str(f.metadata.get("key", f.name)) for f in dataclasses.fields(cls)}
        assert keys <= set(raw[name]), f"[{name}] lacks {sorted(keys - set(raw[name]))}"


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    message = config_error(path=tmp_path / "nope.toml")
    assert "not found" in message
    message = config_error(path=None, env={"OTPD_CONFIG": str(tmp_path / "nope.toml")})
    assert "nope.toml" in message


def test_otpd_config_env_picks_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[server]\nport = 9123\n")
    assert load_config(env={"OTPD_CONFIG": str(file)}).server.port == 9123


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("[server\nport = 1\n")
    assert str(file) in config_error(path=file)


def test_section_that_is_not_a_table_names_it(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("otp = 5\n")
    assert config_error(path=file).startswith("otp")


def test_section_that_is_not_a_table_in_data_is_a_config_error() -> None:
    assert config_error(data={"otp": 5}).startswith("otp")


# ---------------------------------------------------------------- environment


def test_env_overrides_backend_and_port() -> None:
    config = load_config(
        data={"server": {"port": 8080}},
        env={"OTPD_STORE__BACKEND": "redis", "OTPD_SERVER__PORT": "9000"},
    )
    assert config.store.backend == "redis"
    assert config.server.port == 9000


def test_env_overrides_the_file(tmp_path: Path) -> None:
    config = load_config(REPO_CONFIG, env={"OTPD_OTP__LENGTH": "8", "OTPD_SERVER__HOST": "::1"})
    assert config.otp.length == 8
    assert config.server.host == "::1"


def test_env_lists_and_tables_are_json() -> None:
    keys = [{"name": "web", "sha256": DIGEST}, {"name": "cron", "sha256": "0" * 64}]
    config = load_config(
        data={},
        env={
            "OTPD_AUTH__KEYS": json.dumps(keys),
            "OTPD_EMAIL__PROVIDERS": '["smtp", "outbox"]',
            "OTPD_SMS__PRICES": '{"US": 0.0079, "GB": 0.04}',
            "OTPD_SMTP__VERIFY_CERTIFICATE": "false",
            "OTPD_DISPATCH__BACKOFF_BASE_SECONDS": "1",
        },
    )
    assert config.auth.keys == (ApiKey("web", DIGEST), ApiKey("cron", "0" * 64))
    assert config.email.providers == ("smtp", "outbox")
    assert config.sms.prices == {"US": 0.0079, "GB": 0.04}
    assert config.smtp.verify_certificate is False
    assert config.dispatch.backoff_base_seconds == 1.0
    assert isinstance(config.dispatch.backoff_base_seconds, float)


def test_env_strings_are_taken_verbatim() -> None:
    config = load_config(data={}, env={"OTPD_PRODUCT__NAME": '"quoted" [not json]'})
    assert config.product.name == '"quoted" [not json]'


def test_secret_key_alias() -> None:
    assert load_config(data={}, env={"OTPD_SECRET_KEY": SECRET}).security.secret_key == SECRET
    env = {"OTPD_SECURITY__SECRET_KEY": SECRET}
    assert load_config(data={}, env=env).security.secret_key == SECRET


def test_unrelated_env_is_ignored() -> None:
    env = {"OTPD_CONFIG_X": "1", "PATH": "/bin", "OTPDX__Y": "1", "OTPD_SECRET": "z"}
    assert load_config(data={}, env=env) == Config()


# ---------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("data", "env", "key"),
    [
        ({"otp": {"length": 3}}, {}, "otp.length"),
        ({"otp": {"length": 11}}, {}, "otp.length"),
        ({"otp": {"length": "6"}}, {}, "otp.length"),
        ({"otp": {"length": 6.0}}, {}, "otp.length"),
        ({"otp": {"ttl_seconds": 10}}, {}, "otp.ttl_seconds"),
        ({"otp": {"max_attempts": 0}}, {}, "otp.max_attempts"),
        ({"otp": {"per_user_hour": 0}}, {}, "otp.per_user_hour"),
        ({"otp": {"lenght": 6}}, {}, "otp.lenght"),
        ({"server": {"port": True}}, {}, "server.port"),
        ({"server": {"port": 70000}}, {}, "server.port"),
        ({"server": {"env": "staging"}}, {}, "server.env"),
        ({"server": {"max_body_bytes": 10}}, {}, "server.max_body_bytes"),
        ({"store": {"backend": "mongo"}}, {}, "store.backend"),
        ({"store": {"redis_url": "http://x"}}, {}, "store.redis_url"),
        ({"store": {"key_prefix": "a b"}}, {}, "store.key_prefix"),
        ({"security": {"secret_key": "short"}}, {}, "security.secret_key"),
        ({"auth": {"keys": [{"name": "web", "sha256": "abc"}]}}, {}, "auth.keys.sha256"),
        ({"auth": {"keys": [{"name": "web", "sha256": DIGEST.upper()}]}}, {}, "auth.keys.sha256"),
        ({"auth": {"keys": [{"name": "", "sha256": DIGEST}]}}, {}, "auth.keys.name"),
        ({"auth": {"keys": [{"name": "w", "sha256": DIGEST, "x": 1}]}}, {}, "auth.keys[0].x"),
        ({"auth": {"keys": [1]}}, {}, "auth.keys[0]"),
        ({"auth": {"keys": "web"}}, {}, "auth.keys"),
        ({"email": {"providers": ["pigeon"]}}, {}, "email.providers"),
        ({"email": {"providers": []}}, {}, "email.providers"),
        ({"email": {"providers": ["outbox", "outbox"]}}, {}, "email.providers"),
        ({"email": {"providers": "outbox"}}, {}, "email.providers"),
        ({"email": {"from_address": "nobody"}}, {}, "email.from_address"),
        ({"sms": {"providers": ["outbox"]}}, {}, "sms.providers"),
        ({"sms": {"allowed_countries": ["us"]}}, {}, "sms.allowed_countries"),
        ({"sms": {"prices": {"usa": 1.0}}}, {}, "sms.prices"),
        ({"sms": {"blocked_prefixes": ["882"]}}, {}, "sms.blocked_prefixes"),
        ({"smtp": {"password": "p"}}, {}, "smtp.password"),
        ({"smtp": {"tls": "yes"}}, {}, "smtp.tls"),
        ({"links": {"base_url": "ftp://x"}}, {}, "links.base_url"),
        ({"logging": {"level": "loud"}}, {}, "logging.level"),
        ({"dispatch": {"workers": 0}}, {}, "dispatch.workers"),
        ({"oops": {}}, {}, "oops"),
        ({}, {"OTPD_SERVER__PORT": "abc"}, "OTPD_SERVER__PORT"),
        ({}, {"OTPD_AUTH__KEYS": "[{"}, "OTPD_AUTH__KEYS"),
        ({}, {"OTPD_SERVER__PORT": '"9000"'}, "server.port"),
        ({}, {"OTPD_NOPE__X": "1"}, "OTPD_NOPE__X"),
        ({}, {"OTPD_SERVER__NOPE": "1"}, "OTPD_SERVER__NOPE"),
        ({}, {"OTPD_SECRET_KEY": "short"}, "security.secret_key"),
        ({}, {"OTPD_STORE__BACKEND": "disk"}, "store.backend"),
    ],
)
def test_invalid_value_names_its_key(data: dict[str, Any], env: dict[str, str], key: str) -> None:
    message = config_error(data=data, env=env)
    assert message.startswith(f"{key}:") or message.startswith(f"{key} "), message


def test_config_error_details_carry_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data={"otp": {"length": 3}}, env={})
    assert info.value.details["key"] == "otp.length"


# ---------------------------------------------------------------- production and exposure


def production(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = {
        "server": {"env": "production", "host": "0.0.0.0"},  # noqa: S104
        "security": {
            "secret_key": SECRET,
            "encryption_keys": [
                {"id": "k1", "key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
            ],
        },
        "auth": {"keys": [{"name": "web", "sha256": DIGEST}]},
        "store": {"backend": "redis"},
        "links": {"base_url": "https://app.example.com"},
        "email": {"providers": ["smtp"]},
        "sms": {"providers": ["twilio"]},
        "twilio": {
            "account_sid": "AC" + "0" * 32,
            "auth_token": "t",
            "from_number": "+15005550006",
        },
        "metrics": {"token": "metrics-token-0123456789"},  # /metrics on 0.0.0.0 needs one
    }
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    return data


def test_a_complete_production_config_loads() -> None:
    config = load_config(data=production(), env={})
    assert config.server.env == "production"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"security": {"secret_key": ""}}, "security.secret_key"),
        ({"auth": {"keys": []}}, "auth.keys"),
        ({"store": {"backend": "memory"}}, "store.backend"),
        ({"links": {"base_url": "http://app.example.com"}}, "links.base_url"),
        ({"email": {"providers": ["smtp", "outbox"]}}, "email.providers"),
        ({"sms": {"providers": ["console"]}}, "sms.providers"),
    ],
)
def test_production_refuses_unsafe_settings(overrides: dict[str, Any], key: str) -> None:
    message = config_error(data=production(**overrides))
    assert message.startswith(f"{key}:"), message


def test_production_secret_can_come_from_the_environment() -> None:
    data = production(security={"secret_key": ""})
    assert load_config(data=data, env={"OTPD_SECRET_KEY": SECRET}).security.secret_key == SECRET


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com", "::"])  # noqa: S104
def test_no_api_keys_on_a_public_address_is_refused(host: str) -> None:
    message = config_error(data={"server": {"host": host}})
    assert message.startswith("auth.keys:")
    keys = {"keys": [{"name": "web", "sha256": DIGEST}]}
    assert load_config(data={"server": {"host": host}, "auth": keys}, env={}).server.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_no_api_keys_on_loopback_is_allowed(host: str) -> None:
    assert load_config(data={"server": {"host": host}}, env={}).auth.keys == ()


# ---------------------------------------------------------------- masking and immutability


def test_the_known_secrets_are_marked_secret() -> None:
    assert {
        ("security", "secret_key"),
        ("smtp", "password"),
        ("ses", "access_key_id"),
        ("ses", "secret_access_key"),
        ("sendgrid", "api_key"),
        ("mailgun", "api_key"),
        ("sns", "access_key_id"),
        ("sns", "secret_access_key"),
        ("twilio", "auth_token"),
        ("vonage", "api_secret"),
    } <= secret_fields()


def test_masked_config_masks_every_secret_and_nothing_else() -> None:
    data: dict[str, dict[str, Any]] = {"smtp": {"username": "mailer"}}
    values: dict[tuple[str, str], str] = {}
    for section, name in secret_fields():
        value = f"SECRET-{section}-{name}-" + "s" * 32
        values[section, name] = value
        data.setdefault(section, {})[name] = value
    config = load_config(data=data, env={})
    masked = masked_config(config)
    text = json.dumps(masked)
    for value in values.values():
        assert value not in text
    for section, cls in sections().items():
        for f in dataclasses.fields(cls):
            key = str(f.metadata.get("key", f.name))
            shown = masked[section][key]
            actual = getattr(getattr(config, section), f.name)
            if f.metadata.get("secret"):
                assert shown == "********", (section, key)
            elif isinstance(actual, tuple):
                assert shown == [v if isinstance(v, str) else dataclasses.asdict(v) for v in actual]
            else:
                assert shown == actual, (section, key)
    assert masked["smtp"]["username"] == "mailer"
    assert masked["vonage"]["from"] == "otpd"


def test_masked_config_shows_empty_secrets_as_empty() -> None:
    masked = masked_config(Config())
    for section, name in secret_fields():
        assert masked[section][name] == ""


def test_masked_config_is_plain_json() -> None:
    config = load_config(data={"auth": {"keys": [{"name": "web", "sha256": DIGEST}]}}, env={})
    masked = masked_config(config)
    assert json.loads(json.dumps(masked)) == masked
    assert masked["auth"]["keys"] == [{"name": "web", "sha256": DIGEST}]


def test_config_objects_are_frozen() -> None:
    config = load_config(data={"auth": {"keys": [{"name": "web", "sha256": DIGEST}]}}, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = config.server  # type: ignore[misc]
    for name in sections():
        section = getattr(config, name)
        field = dataclasses.fields(section)[0]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, field.name, getattr(section, field.name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.auth.keys[0].sha256 = "0" * 64  # type: ignore[misc]
    assert isinstance(config.auth.keys, tuple)
    assert isinstance(config.email.providers, tuple)


def test_with_overrides_returns_a_new_config() -> None:
    config = Config()
    other = config.with_overrides(otp=dataclasses.replace(config.otp, length=8))
    assert other.otp.length == 8
    assert config.otp.length == 6


@pytest.mark.parametrize(
    ("env", "url", "ok"),
    [
        ("dev", "https://cdn.example.com/logo.png", True),
        ("dev", "http://localhost:8080/logo.png", True),
        ("dev", "javascript:alert(1)", False),
        ("dev", "/logo.png", False),
        ("production", "http://cdn.example.com/logo.png", False),
    ],
)
def test_product_logo_url_must_be_an_absolute_web_url(env: str, url: str, ok: bool) -> None:
    data: dict[str, dict[str, Any]] = {"product": {"logo_url": url}}
    if env == "production":
        data = {**production(), "product": {"logo_url": url}}
    if ok:
        assert load_config(data=data, env={}).product.logo_url == url
    else:
        assert config_error(data=data).startswith("product.logo_url:")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("from_address", "=?utf-8?q?x?=@example.com"),
        ("from_address", "Otpd <no-reply@example.com>"),
        ("reply_to", "help@example.com, evil@example.net"),
        ("reply_to", "help\r\n@example.com"),
    ],
)
def test_sender_addresses_are_one_plain_mailbox(key: str, value: str) -> None:
    # a bad sender would fail every message for good, so start-up refuses it
    assert config_error(data={"email": {key: value}}).startswith(f"email.{key}:")


@pytest.mark.parametrize("section", ["ses", "sns"])
def test_half_set_static_aws_credentials_are_a_config_error(section: str) -> None:
    half = {"access_key_id": "AKIAEXAMPLE"}
    assert config_error(data={section: half}).startswith(f"{section}.secret_access_key:")
    half = {"secret_access_key": "s3cr3t"}
    assert config_error(data={section: half}).startswith(f"{section}.access_key_id:")


def test_shown_config_masks_a_password_inside_a_url() -> None:
    config = load_config(
        data={"store": {"backend": "redis", "redis_url": "redis://otpd:hunter2-secret@db:6379/0"}},
        env={},
    )
    shown = masked_config(config)["store"]["redis_url"]
    assert shown == "redis://otpd:***@db:6379/0"
    assert "hunter2" not in str(masked_config(config))
