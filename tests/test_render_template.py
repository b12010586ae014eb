"""``otpd render-template`` with a context that lacks a key the template needs: one plain
line naming the key, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otpd.cli import main

LINK = "https://app.example.com/reset?token=x"


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("OTPD_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "otpd.toml"
    path.write_text('[product]\nname = "Acme"\n')
    return path


def test_a_missing_key_is_one_line_naming_it_from_a_real_process(
    config_file: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "otpd", "render-template", "otp_code", "--config", str(config_file)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == 'otpd: template otp_code needs the context key "code"\n'


@pytest.mark.parametrize(
    ("name", "fmt", "locale", "context", "key"),
    [
        ("otp_code", "sms", None, '{"code": "042917"}', "ttl_minutes"),
        ("otp_code", "subject", None, '{"ttl_minutes": 10}', "code"),
        ("password_reset", "html", None, '{"ttl_minutes": 60}', "link"),
        ("password_reset", "text", "de", '{"ttl_minutes": 60}', "link"),
        ("email_verification", "text", "de-AT", f'{{"link": "{LINK}"}}', "ttl_minutes"),
        ("account_deletion_requested", "html", "fr", "{}", "deletion_date"),
        ("waitlist_approved", "subject", None, '{"name": "Ada"}', "signup_url"),
    ],
)
def test_render_template_names_the_missing_context_key_and_exits_2(
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    fmt: str,
    locale: str | None,
    context: str,
    key: str,
) -> None:
    argv = ["render-template", name, "--config", str(config_file), "--format", fmt]
    argv += ["--context", context, *(["--locale", locale] if locale else [])]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f'otpd: template {name} needs the context key "{key}"\n'


def test_the_same_template_renders_once_the_key_is_given(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "render-template",
                "otp_code",
                "--config",
                str(config_file),
                "--format",
                "sms",
                "--context",
                '{"code": "042917", "ttl_minutes": 10}',
            ]
        )
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("042917 is your Acme code.")
