"""``otpd check-config`` refuses exactly what ``otpd serve`` refuses, all of it in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otpd.app import Otpd
from otpd.cli import main
from otpd.config import PROVIDERS, load_config
from otpd.crypto import api_key_digest
from otpd.errors import ConfigError

SECRET = "x" * 40
DIGEST = api_key_digest("some-api-key")

# Configurations an operator gets wrong, each with every problem `serve` would refuse.
REFUSED: list[tuple[str, str, list[str]]] = [
    (
        "sendgrid_without_key",
        "[email]\nproviders = ['sendgrid']\n",
        ["sendgrid.api_key"],
    ),
    (
        "mailgun_without_key_and_domain",
        "[email]\nproviders = ['mailgun']\n",
        ["mailgun.api_key", "mailgun.domain"],
    ),
    (
        "twilio_without_anything",
        "[sms]\nproviders = ['twilio']\n",
        ["twilio.account_sid", "twilio.auth_token", "twilio.from_number"],
    ),
    (
        "twilio_with_malformed_sids_and_callback",
        "[sms]\nproviders = ['twilio']\n[twilio]\naccount_sid = 'AC123'\nauth_token = 't'\n"
        "messaging_service_sid = 'MG123'\nstatus_callback = 'http://otpd.example.org/cb'\n",
        ["twilio.account_sid", "twilio.messaging_service_sid", "twilio.status_callback"],
    ),
    (
        "vonage_without_credentials",
        "[sms]\nproviders = ['vonage']\n",
        ["vonage.api_key", "vonage.api_secret"],
    ),
    (
        "smtp_with_an_unreadable_ca_file",
        "[email]\nproviders = ['smtp']\n[smtp]\nca_file = '/nonexistent/ca.pem'\n",
        ["smtp.ca_file"],
    ),
    (
        "missing_templates_dir",
        "[email]\ntemplates_dir = '/nonexistent/templates'\n",
        ["email.templates_dir"],
    ),
    (
        "public_address_without_keys",
        "[server]\nhost = '0.0.0.0'\n",
        ["auth.keys"],
    ),
    (
        "eleven_problems_at_once",
        "[server]\nenv = 'production'\nport = 70000\n"
        "[otp]\nlength = 3\nlenght = 6\n"
        "[email]\nproviders = ['sendgrid', 'pigeon']\n"
        "[sms]\nproviders = ['vonage']\n[vonage]\napi_key = 'k'\n",
        [
            "server.port",
            "otp.lenght",
            "otp.length",
            "email.providers",
            "security.secret_key",
            "auth.keys",
            "store.backend",
            "security.encryption_keys",
            "links.base_url",
            "sendgrid.api_key",
            "vonage.api_secret",
        ],
    ),
]


def problem_lines(err: str) -> list[str]:
    prefix = "otpd: invalid configuration: "
    lines = err.strip().splitlines()
    assert all(line.startswith(prefix) for line in lines), err
    return [line.removeprefix(prefix) for line in lines]


@pytest.mark.parametrize(
    ("text", "keys"), [(t, k) for _, t, k in REFUSED], ids=[n for n, *_ in REFUSED]
)
def test_check_config_and_serve_refuse_the_same_problems_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, keys: list[str]
) -> None:
    file = tmp_path / "c.toml"
    file.write_text(text)
    seen: dict[str, list[str]] = {}
    for command in ("check-config", "serve"):
        with pytest.raises(SystemExit) as info:
            main([command, "--config", str(file)])
        assert info.value.code == 2
        out, err = capsys.readouterr()
        assert out == ""
        seen[command] = problem_lines(err)
    assert seen["check-config"] == seen["serve"]
    reported = [line.split(":", 1)[0] for line in seen["serve"]]
    assert sorted(set(reported)) == sorted(set(keys)), seen["serve"]


def complete(**sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every provider of both channels configured with the settings each needs."""
    data: dict[str, dict[str, Any]] = {
        "security": {"secret_key": SECRET},
        "email": {"providers": [n for n, s in PROVIDERS.items() if s.channel == "email"]},
        "sms": {"providers": [n for n, s in PROVIDERS.items() if s.channel == "sms"]},
        "sendgrid": {"api_key": "SG.key"},
        "mailgun": {"api_key": "key-1", "domain": "mg.example.com"},
        "twilio": {
            "account_sid": "AC" + "0" * 32,
            "auth_token": "token",
            "from_number": "+15005550006",
        },
        "vonage": {"api_key": "k", "api_secret": "s"},
        "ses": {"region": "eu-west-1"},
        "sns": {"region": "eu-west-1"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


async def test_what_check_config_accepts_the_daemon_opens_with_every_provider(
    tmp_path: Path,
) -> None:
    config = load_config(data=complete(outbox={"dir": str(tmp_path)}), env={})
    async with Otpd(config) as daemon:
        names = {p.name for chain in daemon.chains.values() for p in chain.providers}
    assert names == set(PROVIDERS)


def test_a_provider_rule_holds_only_while_the_provider_is_used() -> None:
    # credentials of an unused vendor may stay empty
    assert load_config(data={"mailgun": {"region": "eu"}}, env={}).mailgun.api_key == ""
    with pytest.raises(ConfigError) as info:
        load_config(data={"email": {"providers": ["outbox", "mailgun"]}}, env={})
    assert info.value.details["keys"] == ["mailgun.api_key", "mailgun.domain"]


# ---------------------------------------------------------------- vendor URLs and Twilio SIDs

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "MG" + "fedcba9876543210" * 2
# every vendor URL key, with the provider that uses it
VENDOR_URLS = [
    ("sendgrid", "sendgrid", "base_url"),
    ("mailgun", "mailgun", "base_url"),
    ("vonage", "vonage", "base_url"),
    ("twilio", "twilio", "base_url"),
    ("ses", "ses", "endpoint_url"),
    ("sns", "sns", "endpoint_url"),
]
VENDOR_SECTIONS = {section for _, section, _ in VENDOR_URLS}


def production(**sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`complete` as production wants it: every vendor provider, no dev ones."""
    data = complete(
        server={"env": "production", "host": "0.0.0.0"},  # noqa: S104
        auth={"keys": [{"name": "web", "sha256": DIGEST}]},
        store={"backend": "redis"},
        links={"base_url": "https://app.example.com"},
    )
    data["security"]["encryption_keys"] = [{"id": "k1", "key": "A" * 43 + "="}]
    data["email"]["providers"] = [p for p in data["email"]["providers"] if p != "outbox"]
    data["sms"]["providers"] = [p for p in data["sms"]["providers"] if p != "console"]
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def vendor_problems(data: dict[str, Any]) -> list[str]:
    """The problems ``data`` has in the vendor sections, in order (none if it loads); the
    rules of other sections are theirs to test."""
    try:
        load_config(data=data, env={})
    except ConfigError as exc:
        return [p for p in exc.problems if p.split(".", 1)[0] in VENDOR_SECTIONS]
    return []


def test_production_accepts_vendor_urls_over_https() -> None:
    urls = {s: {k: f"https://{s}.mock.example:8443/v"} for _, s, k in VENDOR_URLS}
    assert vendor_problems(production(**urls)) == []
    assert vendor_problems(production()) == []  # the defaults
    data = {
        "sms": {"providers": ["twilio"]},
        "twilio": {
            "account_sid": ACCOUNT_SID,
            "auth_token": "t",
            "from_number": "+15005550006",
            "base_url": "https://api.dublin.ie1.twilio.com",
        },
    }
    assert load_config(data=data, env={}).twilio.base_url == "https://api.dublin.ie1.twilio.com"


@pytest.mark.parametrize(("provider", "section", "key"), VENDOR_URLS)
def test_production_refuses_each_vendor_url_over_http(
    provider: str, section: str, key: str
) -> None:
    data = production(**{section: {key: "http://mock.internal:8080"}})
    assert vendor_problems(data) == [f"{section}.{key}: must be https:// in production"]


@pytest.mark.parametrize(("provider", "section", "key"), VENDOR_URLS)
def test_an_http_vendor_url_is_fine_in_dev_and_for_an_unused_vendor_in_production(
    provider: str, section: str, key: str
) -> None:
    assert vendor_problems(complete(**{section: {key: "http://127.0.0.1:8080"}})) == []
    unused = production(**{section: {key: "http://mock.internal:8080"}})
    channel = "email" if provider in unused["email"]["providers"] else "sms"
    unused[channel]["providers"].remove(provider)
    assert vendor_problems(unused) == []


@pytest.mark.parametrize("url", ["api.sendgrid.com", "ftp://mock.internal", "https://", "/v3"])
def test_a_vendor_url_must_be_absolute_in_every_mode(url: str) -> None:
    assert vendor_problems(complete(sendgrid={"base_url": url})) == [
        "sendgrid.base_url: must be an absolute https:// URL (or http:// in dev)"
    ]
    assert vendor_problems(production(sendgrid={"base_url": url})) == [
        "sendgrid.base_url: must be an absolute https:// URL"
    ]


ACCOUNT = "twilio.account_sid: must be AC followed by 32 hex digits"
SERVICE = "twilio.messaging_service_sid: must be MG followed by 32 hex digits"
CALLBACK = "twilio.status_callback: must be an absolute https:// URL"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"account_sid": "AC123"}, ACCOUNT),
        ({"account_sid": "SK" + "0" * 32}, ACCOUNT),
        ({"account_sid": ACCOUNT_SID + "0"}, ACCOUNT),
        ({"account_sid": "AC" + "g" * 32}, ACCOUNT),
        ({"account_sid": f" {ACCOUNT_SID}"}, ACCOUNT),
        ({"messaging_service_sid": "MG-service"}, SERVICE),
        ({"messaging_service_sid": ACCOUNT_SID}, SERVICE),
        ({"status_callback": "http://otpd.example.org/twilio/status"}, CALLBACK),
        ({"status_callback": "/twilio/status"}, CALLBACK),
    ],
)
def test_malformed_twilio_sids_and_callback_are_refused_in_dev_too(
    values: dict[str, str], problem: str
) -> None:
    twilio = {"account_sid": ACCOUNT_SID, "auth_token": "t", "from_number": "+15005550006"}
    data = {"sms": {"providers": ["twilio"]}, "twilio": {**twilio, **values}}
    with pytest.raises(ConfigError) as info:
        load_config(data=data, env={})
    assert list(info.value.problems) == [problem]


def test_well_formed_twilio_sids_and_callback_are_accepted() -> None:
    values = {
        "account_sid": "AC" + "0123456789ABCDEF" * 2,
        "from_number": "",
        "messaging_service_sid": SERVICE_SID,
        "status_callback": "https://otpd.example.org/twilio/status?source=otpd",
    }
    data = {"sms": {"providers": ["twilio"]}, "twilio": {"auth_token": "t", **values}}
    assert load_config(data=data, env={}).twilio.messaging_service_sid == SERVICE_SID
    assert vendor_problems(production(twilio=values)) == []


def test_twilio_sids_of_an_unused_twilio_are_not_checked() -> None:
    config = load_config(data={"twilio": {"account_sid": "AC123"}}, env={})
    assert config.twilio.account_sid == "AC123"


def test_check_config_prints_each_vendor_problem_on_its_own_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        f"""
[server]
env = "production"
host = "0.0.0.0"
[security]
secret_key = "{SECRET}"
[auth]
keys = [{{ name = "web", sha256 = "{DIGEST}" }}]
[store]
backend = "redis"
[links]
base_url = "https://app.example.com"
[email]
providers = ["sendgrid", "mailgun", "ses"]
[sms]
providers = ["twilio", "vonage", "sns"]
[sendgrid]
api_key = "SG.key"
base_url = "http://sendgrid.mock:8080"
[mailgun]
api_key = "key-1"
domain = "mg.example.com"
base_url = "http://mailgun.mock:8080"
[ses]
endpoint_url = "http://moto:5000"
[sns]
endpoint_url = "http://moto:5000"
[twilio]
account_sid = "AC123"
auth_token = "token"
messaging_service_sid = "MG123"
status_callback = "http://otpd.example.org/twilio/status"
base_url = "http://twilio.mock:8080"
[vonage]
api_key = "k"
api_secret = "s"
base_url = "http://vonage.mock:8080"
"""
    )
    seen: dict[str, list[str]] = {}
    for command in ("check-config", "serve"):
        with pytest.raises(SystemExit) as info:
            main([command, "--config", str(file)])
        assert info.value.code == 2
        out, err = capsys.readouterr()
        assert out == ""
        seen[command] = problem_lines(err)
    assert seen["check-config"] == seen["serve"]
    lines = seen["check-config"]
    assert [line for line in lines if line.split(".", 1)[0] in VENDOR_SECTIONS] == [
        "sendgrid.base_url: must be https:// in production",
        "mailgun.base_url: must be https:// in production",
        "ses.endpoint_url: must be https:// in production",
        ACCOUNT,
        SERVICE,
        CALLBACK,
        "twilio.base_url: must be https:// in production",
        "vonage.base_url: must be https:// in production",
        "sns.endpoint_url: must be https:// in production",
    ]
