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
        "ten_problems_at_once",
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
