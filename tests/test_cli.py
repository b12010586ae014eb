"""The command line: ``otpd check-config`` and ``otpd serve`` (as a real process)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from otpd import cli
from otpd.app import Otpd
from otpd.cli import main
from otpd.config import load_config
from tests.conftest import free_port

SECRET = "cli-secret-key-0123456789abcdef-0123456789"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPD_")}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def no_otpd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTPD_"):
            monkeypatch.delenv(name)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- check-config


def test_check_config_prints_masked_json_and_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_config(tmp_path / "c.toml", "[otp]\nlength = 8\n[smtp]\nusername = 'u'\n")
    monkeypatch.setenv("OTPD_SECRET_KEY", SECRET)
    monkeypatch.setenv("OTPD_SMTP__PASSWORD", "hunter2-password")
    main(["check-config", "--config", str(file)])
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["security"]["secret_key"] == "********"
    assert printed["smtp"]["password"] == "********"
    assert printed["otp"]["length"] == 8
    assert SECRET not in out + err
    assert "hunter2" not in out + err
    assert "valid" in err


def test_check_config_reads_otpd_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_config(tmp_path / "c.toml", "[server]\nport = 9555\n")
    monkeypatch.setenv("OTPD_CONFIG", str(file))
    main(["check-config"])
    assert json.loads(capsys.readouterr().out)["server"]["port"] == 9555


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[otp]\nlength = 3\n", "otp.length"),
        ("[otp]\nlenght = 6\n", "otp.lenght"),
        ("[server]\nenv = 'production'\n", "security.secret_key"),
        ("[server]\nhost = '0.0.0.0'\n", "auth.keys"),
        ("[email]\nproviders = ['pigeon']\n", "email.providers"),
    ],
)
def test_invalid_config_exits_2_with_one_line_per_problem_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    file = write_config(tmp_path / "c.toml", text)
    with pytest.raises(SystemExit) as info:
        main(["check-config", "--config", str(file)])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert all(line.startswith("otpd: invalid configuration: ") for line in lines), err
    assert key in lines[0]
    if "production" in text:
        # production without anything set is several problems, each on its own line
        keys = {line.removeprefix("otpd: invalid configuration: ").split(":")[0] for line in lines}
        assert len(keys) == len(lines) > 1, err
        assert {"security.secret_key", "auth.keys", "store.backend", "links.base_url"} <= keys
    else:
        assert len(lines) == 1, err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    for command in ("check-config", "serve"):
        with pytest.raises(SystemExit) as info:
            main([command, "--config", str(missing)])
        assert info.value.code == 2
        assert "missing.toml" in capsys.readouterr().err


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explode"])
    assert info.value.code == 2


def test_check_config_as_a_real_process(tmp_path: Path) -> None:
    file = write_config(tmp_path / "c.toml", "[store]\nbackend = 'memory'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "otpd", "check-config", "--config", str(file)],
        env=clean_env(OTPD_SECRET_KEY=SECRET),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["security"]["secret_key"] == "********"
    assert SECRET not in proc.stdout + proc.stderr


def test_invalid_config_as_a_real_process_exits_2(tmp_path: Path) -> None:
    file = write_config(tmp_path / "c.toml", "[otp]\nlength = 11\n")
    proc = subprocess.run(
        [sys.executable, "-m", "otpd", "check-config", "--config", str(file)],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert "otp.length" in line


# ---------------------------------------------------------------- serve


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "otpd serve exited early"
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"otpd did not answer /healthz within {timeout}s")


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        await asyncio.sleep(0.05)
    return None


async def test_serve_issues_and_verifies_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    outbox = tmp_path / "outbox"
    file = write_config(
        tmp_path / "c.toml",
        f"[server]\nport = {port}\n[otp]\nlength = 8\n[outbox]\ndir = '{outbox}'\n",
    )
    log_path = tmp_path / "otpd.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otpd", "serve", "--config", str(file)],
            env=clean_env(OTPD_SECRET_KEY=SECRET),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_healthy(url, proc)
        async with aiohttp.ClientSession() as http:
            body = {"user_id": "cli-user", "channel": "email", "email": "cli@example.com"}
            async with http.post(f"{url}/v1/otp", json=body) as resp:
                assert resp.status == 202, await resp.text()
                task_id = (await resp.json())["deliveries"][0]["task_id"]
            for _ in range(500):
                async with http.get(f"{url}/v1/tasks/{task_id}") as resp:
                    status = (await resp.json())["status"]
                if status in ("sent", "failed"):
                    break
                await asyncio.sleep(0.01)
            assert status == "sent"
            (eml,) = outbox.glob("*.eml")
            subject = next(
                line for line in eml.read_text().splitlines() if line.startswith("Subject:")
            )
            code = subject.split()[1]
            assert len(code) == 8
            assert code.isdigit()
            verify = {"user_id": "cli-user", "code": code}
            async with http.post(f"{url}/v1/otp/verify", json=verify) as resp:
                assert await resp.json() == {"verified": True}
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 10.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = log_path.read_text()
    listening = [line for line in output.splitlines() if "otpd.listening" in line]
    assert len(listening) == 1, output
    assert "store=memory" in listening[0]
    assert "outbox" in listening[0]
    assert "console" in listening[0]
    assert f"127.0.0.1:{port}" in listening[0]
    assert "otpd.stopped" in output
    assert code not in output
    assert SECRET not in output


def serve_fails(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``otpd serve`` as a real process, expected to fail at start-up."""
    file = write_config(tmp_path / "c.toml", config)
    return subprocess.run(
        [sys.executable, "-m", "otpd", "serve", "--config", str(file), *args],
        env=clean_env(OTPD_SECRET_KEY=SECRET),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """A start-up failure: exit 1, exactly one line on stderr, no traceback anywhere."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_serve_with_redis_down_prints_one_line_naming_the_masked_url(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:hunter2-password@127.0.0.1:{port}/0"
    proc = serve_fails(tmp_path, f"[store]\nbackend = 'redis'\nredis_url = '{url}'\n")
    line = one_line_failure(proc)
    assert line == (
        f"otpd: cannot reach the store at redis://:***@127.0.0.1:{port}/0: Connection refused"
    )
    assert "hunter2" not in proc.stdout + proc.stderr


def test_serve_on_a_busy_port_prints_one_line_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = serve_fails(tmp_path, f"[server]\nport = {port}\n[outbox]\ndir = '{tmp_path}'\n")
    line = one_line_failure(proc)
    assert line == f"otpd: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "otpd.failed_to_start" in proc.stdout  # and the log says so too


def test_serve_with_a_provider_that_cannot_open_names_it_and_its_setting(tmp_path: Path) -> None:
    """``outbox.dir`` passes the config checks (any non-empty path) but the dev providers
    cannot open a directory where a file is."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    proc = serve_fails(tmp_path, f"[server]\nport = 0\n[outbox]\ndir = '{blocker}'\n")
    line = one_line_failure(proc)
    assert line == (
        f"otpd: cannot open the outbox and console providers: outbox.dir = '{blocker}': File exists"
    )


def test_serve_with_a_provider_setting_refused_at_load_prints_one_line(tmp_path: Path) -> None:
    proc = serve_fails(tmp_path, "[email]\nproviders = ['sendgrid']\n")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("otpd: invalid configuration: sendgrid.api_key: ")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_serve_debug_adds_the_traceback_after_the_line(tmp_path: Path) -> None:
    port = free_port()
    config = f"[store]\nbackend = 'redis'\nredis_url = 'redis://127.0.0.1:{port}/0'\n"
    proc = serve_fails(tmp_path, config, "--debug")
    assert proc.returncode == 1
    first, *rest = proc.stderr.splitlines()
    assert first.startswith("otpd: cannot reach the store at redis://127.0.0.1:")
    assert rest
    assert rest[0].startswith("Traceback")


# ---------------------------------------------------------------- outbox latest


def outbox_latest(config: Path, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "otpd", "outbox", "latest", "--config", str(config), *args],
        env=clean_env(),
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def dev_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "c.toml",
        f"[security]\nsecret_key = '{SECRET}'\n[outbox]\ndir = '{tmp_path / 'outbox'}'\n"
        "[tokens]\nreset_per_email_hour = 1\n",
    )


async def test_outbox_latest_prints_the_newest_code_link_or_text(dev_config: Path) -> None:
    async with Otpd(load_config(dev_config)) as daemon:
        await daemon.otp.issue(
            user_id="42", channel="both", email="jane@example.com", phone="+14155552671"
        )
        await daemon.links.request_password_reset(user_id="42", email="ada@example.com")
        await daemon.dispatcher.wait_idle()
    rc, out, err = outbox_latest(dev_config, "--to", "+1 415 555 2671", "--code")
    assert (rc, err) == (0, "")
    code = out.strip()
    assert re.fullmatch(r"\d{6}", code)
    assert outbox_latest(dev_config, "--to", "Jane@Example.com", "--code")[1] == out
    rc, out, err = outbox_latest(dev_config, "--to", "+14155552671")
    assert (rc, err) == (0, "")
    assert out.startswith(f"{code} is your otpd code.")
    rc, out, err = outbox_latest(dev_config, "--to", "ada@example.com", "--link")
    assert (rc, err) == (0, "")
    assert re.fullmatch(r"https?://\S+[?&]token=[\w.~-]+\n", out), out
    rc, out, err = outbox_latest(dev_config, "--to", "ada@example.com", "--code")
    assert (rc, out) == (1, "")
    assert err == "otpd: the newest message to ada@example.com (password_reset) holds no code\n"


async def test_outbox_latest_says_so_when_the_newest_message_was_refused(
    dev_config: Path,
) -> None:
    """The second reset within the hour is dropped silently (the API answers 202 either
    way); the outbox keeps a trace, so the link of the first is not passed off as new."""
    async with Otpd(load_config(dev_config)) as daemon:
        await daemon.links.request_password_reset(user_id="42", email="ada@example.com")
        await daemon.dispatcher.wait_idle()
        rc, first, _ = outbox_latest(dev_config, "--to", "ada@example.com", "--link")
        assert rc == 0
        assert "token=" in first
        dropped = await daemon.links.request_password_reset(user_id="42", email="ada@example.com")
        await daemon.dispatcher.wait_idle()
        assert (await daemon.tasks.get(dropped.task_id)).status.value == "failed"
    rc, out, err = outbox_latest(dev_config, "--to", "ada@example.com", "--link")
    assert (rc, out) == (1, "")
    assert err == (
        "otpd: the newest message to ada@example.com (password_reset) was refused by a limit "
        "(rate_limited: email_hour): nothing newer was sent\n"
    )
    # another address is not affected
    assert outbox_latest(dev_config, "--to", "bo@example.com")[2].startswith("otpd: no message")


def test_outbox_latest_needs_the_dev_outbox(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml", "[email]\nproviders = ['smtp']\n[sms]\nproviders = ['sns']\n"
    )
    rc, out, err = outbox_latest(config, "--to", "ada@example.com")
    assert (rc, out) == (2, "")
    assert err == (
        "otpd: outbox latest needs the dev outbox "
        "(email.providers has no outbox, sms.providers no console)\n"
    )


def test_outbox_latest_outside_dev_mode_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Belt and braces: a production config already refuses the dev providers, so this
    one is forced past the loader."""
    config = load_config(data={"outbox": {"dir": str(tmp_path)}}, env={})
    object.__setattr__(config, "server", dataclasses.replace(config.server, env="production"))
    assert cli._outbox_latest(config, "ada@example.com", code=False, link=True) == 2
    assert capsys.readouterr().err == (
        "otpd: outbox latest works in dev mode only (server.env is production)\n"
    )
