"""The README runs as written: the walkthrough's shell commands against ``make run``, the
embedding example, and the layout naming every module."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# What `make run` needs from a checkout; the walkthrough runs in a directory of its own, so
# that its outbox (var/outbox) holds nothing but what it sends.
CHECKOUT = ("Makefile", "pyproject.toml", "constraints.txt", "config.toml", ".venv")
README_PORT = "127.0.0.1:8080"


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


@dataclass
class Step:
    """One command of a block and the lines the README says it prints."""

    command: str
    expected: list[str] = field(default_factory=list)

    def pattern(self) -> re.Pattern[str]:
        """The expected lines as a pattern: ``…`` stands for anything, and a line break or
        run of spaces in the README for any whitespace (the README wraps long answers)."""
        text = " ".join(line.strip() for line in self.expected)
        parts = [
            r"\s*" if part.isspace() else ".*?" if part == "…" else re.escape(part)
            for part in re.split(r"(\s+|…)", text)
            if part
        ]
        return re.compile("".join(parts), re.S)


def steps(block: str) -> list[Step]:
    """The commands of a block, each with the ``#`` lines right under it (its output).

    A comment after a blank line describes what follows; a command runs over several
    lines while a quote is open.
    """
    out: list[Step] = []
    pending: list[str] = []
    current: Step | None = None
    for line in block.splitlines():
        if pending:
            pending.append(line)
        elif not line.strip():
            current = None
            continue
        elif line.startswith("#"):
            if current is not None:
                current.expected.append(line[1:].removeprefix(" "))
            continue
        else:
            pending = [line]
        text = "\n".join(pending)
        try:
            shlex.split(text)
        except ValueError:  # a quote is still open
            continue
        current = Step(text)
        out.append(current)
        pending = []
    assert not pending, f"unterminated command: {pending}"
    return out


def walkthrough() -> list[Step]:
    blocks = sh_blocks(section("Walkthrough with curl"))
    links = section("Email verification and password reset links")
    flow = links.split("Both flows from curl against `make run`", 1)[1]
    blocks.append(sh_blocks(flow)[0])
    return [step for block in blocks for step in steps(block)]


def test_the_walkthrough_is_read_as_commands_and_outputs() -> None:
    found = walkthrough()
    assert len(found) >= 25
    first = found[0]
    assert first.command.startswith("OTP=$(curl -s 127.0.0.1:8080/v1/otp")
    assert first.command.count("\n") == 3
    assert first.pattern().fullmatch(
        '{"otp_id": "otp_1", "expires_at": "2026-11-22T10:10:00Z", "deliveries": '
        '[{"channel": "email", "task_id": "tsk_1"}, {"channel": "sms", "task_id": "tsk_2"}]}'
    )
    assert any(step.command.startswith("CODE=") and not step.expected for step in found)


def run_steps(found: list[Step], cwd: Path, port: int) -> list[tuple[str, int]]:
    """Run the commands in one bash, as pasted into a terminal (stderr shows with stdout);
    the README's port is the only thing replaced. Returns each one's output and status."""
    marker = "@@otpd-readme-step@@"
    script = ["exec 2>&1"]
    for step in found:
        script.append(step.command.replace(README_PORT, f"127.0.0.1:{port}"))
        script.append(f"printf '\\n{marker} %d\\n' $?")
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=walkthrough_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # "<output 1>\n@@ 0\n<output 2>\n@@ 0\n...": a status opens each chunk but the first
    chunks = proc.stdout.split(marker)
    assert len(chunks) == len(found) + 1, proc.stdout
    results = []
    for i in range(len(found)):
        output = chunks[i].partition("\n")[2] if i else chunks[0]
        status = int(chunks[i + 1].partition("\n")[0])
        results.append((output.strip("\n"), status))
    return results


def walkthrough_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTPD_", "MAKE"))}
    env.update(extra)
    return env


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make run exited early:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"make run did not answer within 30 s:\n{log.read_text()}")


@pytest.mark.slow
def test_the_walkthrough_runs_as_pasted_against_make_run(tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("curl") is None:
        pytest.skip("the walkthrough needs make and curl")
    two = sh_blocks(section("Two commands"))[0]
    assert two.startswith("make run "), "the README starts the daemon with make run"
    assert "With a fresh `make run` in one terminal" in section("Walkthrough with curl")
    if not (ROOT / ".venv" / ".installed-stamp").exists():
        pytest.skip("no installed venv: run make install")
    for name in CHECKOUT:
        (tmp_path / name).symlink_to(ROOT / name)
    port = free_port()
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            # -o: take the venv as installed; a test never reinstalls the shared one
            ["make", "-o", ".venv/.installed-stamp", "run"],
            cwd=tmp_path,
            env=walkthrough_env(OTPD_SERVER__PORT=str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
    try:
        wait_healthy(port, daemon, log)
        found = walkthrough()
        results = run_steps(found, tmp_path, port)
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGINT)  # Ctrl-C in that terminal
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
    failures = []
    for step, (output, status) in zip(found, results, strict=True):
        if status != 0:
            failures.append(f"$ {step.command}\nexit status {status}\n{output}")
        elif step.expected and not step.pattern().fullmatch(output):
            failures.append(
                f"$ {step.command}\nprinted:\n{output}\nREADME shows:\n" + "\n".join(step.expected)
            )
        elif not step.expected and output:
            failures.append(f"$ {step.command}\nprinted (the README shows nothing):\n{output}")
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in log.read_text()


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", section("Embedding"), re.S)
    assert code is not None, "the Embedding section has no python example"
    result = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=walkthrough_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # it passes a secret of its own: no ephemeral-key warning
    assert "ephemeral_secret_key" not in result.stdout + result.stderr
    # structlog's default logger prints to stdout too: keep the example's own lines
    lines = [ln for ln in result.stdout.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", ln)]
    assert lines[0].startswith("otp_")
    # a made-up code is wrong, not an error (or, once in a million, right)
    assert lines[1] in ("False invalid_code 2", "True None 0")
    assert lines[2].startswith("serving on http://127.0.0.1:")
    # and an outbox of its own, relative to where it runs
    outbox = tmp_path / "var" / "embedded-outbox"
    assert len(list(outbox.glob("*.eml"))) == 1
    assert len(list(outbox.glob("*.txt"))) == 1


def test_readme_uses_one_host_spelling_and_the_venv_command() -> None:
    """The daemon binds 127.0.0.1, and ``otpd`` is not on PATH after ``make run``."""
    assert "localhost:" not in README
    for block in sh_blocks(README):
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            assert not re.search(r"(^|[\s;|(])otpd ", line), line


def test_readme_layout_names_every_module() -> None:
    layout = section("Layout")
    missing = []
    for path in sorted((ROOT / "otpd").rglob("*.py")):
        relative = path.relative_to(ROOT / "otpd")
        folders = [f"{part}/" for part in relative.parts[:-1]]
        named = all(f in layout for f in folders) and (
            path.name in layout or (path.name == "__init__.py" and folders)
        )
        if not named:
            missing.append(str(relative))
    assert not missing, f"README layout does not name {missing}"
