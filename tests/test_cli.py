"""The command line: ``otpd check-config`` and ``otpd serve`` (as a real process)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from otpd.cli import main
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
    # production without anything set is six problems, each on its own line
    assert len(lines) == (6 if "production" in text else 1), err


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


async def test_serve_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        file = write_config(
            tmp_path / "c.toml", f"[server]\nport = {port}\n[outbox]\ndir = '{tmp_path}'\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "otpd", "serve", "--config", str(file)],
            env=clean_env(OTPD_SECRET_KEY=SECRET),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert await wait_exit(proc, 20.0) == 1
            assert proc.stdout is not None
            assert b"otpd.failed_to_start" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
