"""``otpd serve --processes N`` and ``--role api|worker`` as real processes on a private
redis-server: a shared port, a clean stop, restarts, and delivery in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from otpd.app import Otpd
from otpd.errors import ConfigError
from otpd.outbox import find_code, latest
from tests.conftest import TEST_SECRET, ConfigFactory, free_port

pytestmark = pytest.mark.slow

START_TIMEOUT = 30.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPD_")}
    env.update(extra)
    return env


def write_config(tmp_path: Path, port: int, redis_url: str | None, **extra: str) -> Path:
    """A dev config on ``port`` (the outbox in tmp_path), on Redis unless ``redis_url`` is
    None; ``extra`` adds ``[section]`` bodies."""
    sections = {
        "server": f"port = {port}\ninstance_id = 't{uuid.uuid4().hex[:8]}'",
        "security": f"secret_key = '{TEST_SECRET}'",
        "outbox": f"dir = '{tmp_path / 'outbox'}'",
        "dispatch": "drain_timeout_seconds = 2.0",
    }
    if redis_url is not None:
        prefix = f"p{uuid.uuid4().hex[:10]}:"
        sections["store"] = f"backend = 'redis'\nredis_url = '{redis_url}'\nkey_prefix = '{prefix}'"
    for name, body in extra.items():
        sections[name] = sections.get(name, "") + "\n" + body
    path = tmp_path / f"otpd-{port}.toml"
    path.write_text("".join(f"[{name}]\n{body}\n" for name, body in sections.items()))
    return path


def instance_base(config: Path) -> str:
    text = config.read_text()
    return text.split("instance_id = '", 1)[1].split("'", 1)[0]


class Serve:
    """``otpd serve ARGS`` in its own process group, so that cleanup reaches its children
    even when the supervisor was killed or a test failed half-way."""

    def __init__(self, tmp_path: Path, config: Path, *args: str, **env: str) -> None:
        self.log_path = tmp_path / f"serve-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "otpd", "serve", "--config", str(config), *args],
                env=clean_env(**env),
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def children(self) -> set[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return {int(pid) for pid in path.read_text().split()}
        except FileNotFoundError:
            return set()

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        raise AssertionError(f"otpd serve still runs after {timeout}s:\n{self.output}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group is this process's own
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Serve] = []

    def start(config: Path, *args: str, **env: str) -> Serve:
        daemon = Serve(tmp_path, config, *args, **env)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # a new connection per request, so that the kernel picks a process each time
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def ready_instances(
    http: aiohttp.ClientSession, port: int, daemon: Serve, want: set[str]
) -> dict[str, Any]:
    """GET /readyz until every instance id in ``want`` answered; their last answers."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert daemon.proc.poll() is None, f"otpd serve exited early:\n{daemon.output}"
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 200:
                    body = await resp.json()
                    seen[body["checks"]["dispatcher"]["instance_id"]] = body
        if want <= seen.keys():
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"saw {sorted(seen)}, not {sorted(want)}:\n{daemon.output}")


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_is_free(port: int) -> bool:
    """Whether a server can listen on ``port`` (with SO_REUSEADDR, as servers do: the
    connections the test made may linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def two_free_ports() -> int:
    """A port that is free together with the next one."""
    for _ in range(100):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no two free ports in a row")


async def test_two_processes_share_one_port_and_both_answer(
    tmp_path: Path, redis_url: str, serve: Any, http: aiohttp.ClientSession
) -> None:
    port, metrics_port = free_port(), two_free_ports()
    config = write_config(tmp_path, port, redis_url, metrics=f"port = {metrics_port}")
    base = instance_base(config)
    daemon = serve(config, "--processes", "2")
    seen = await ready_instances(http, port, daemon, {f"{base}-1", f"{base}-2"})
    assert set(seen) == {f"{base}-1", f"{base}-2"}
    assert len(daemon.children()) == 2
    # with metrics.port, process i serves its own metrics on metrics.port + i - 1
    for p in (metrics_port, metrics_port + 1):
        async with http.get(f"http://127.0.0.1:{p}/metrics") as resp:
            assert resp.status == 200, p
    # a code issued through one process verifies through whichever answers next
    url = f"http://127.0.0.1:{port}"
    body = {"user_id": "u1", "channel": "email", "email": "multi@example.com"}
    async with http.post(f"{url}/v1/otp", json=body) as resp:
        assert resp.status == 202, await resp.text()
    code = None
    for _ in range(500):
        entry = latest(tmp_path / "outbox", "multi@example.com")
        code = None if entry is None else find_code(entry, 6)
        if code:
            break
        await asyncio.sleep(0.02)
    assert code is not None
    async with http.post(f"{url}/v1/otp/verify", json={"user_id": "u1", "code": code}) as resp:
        assert await resp.json() == {"verified": True}


async def test_sigterm_to_the_supervisor_stops_every_child_with_status_0_and_frees_the_port(
    tmp_path: Path, redis_url: str, serve: Any, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, redis_url)
    base = instance_base(config)
    daemon = serve(config, "--processes", "2")
    await ready_instances(http, port, daemon, {f"{base}-1", f"{base}-2"})
    children = daemon.children()
    assert len(children) == 2
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait_exit(20.0) == 0, daemon.output
    assert not any(running(pid) for pid in children)
    assert port_is_free(port)
    output = daemon.output
    assert output.count("otpd.stopped") == 2, output
    assert "supervisor.stopped" in output
    assert "Traceback" not in output


async def test_a_child_killed_with_sigkill_is_started_again(
    tmp_path: Path, redis_url: str, serve: Any, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, redis_url)
    base = instance_base(config)
    daemon = serve(config, "--processes", "2")
    await ready_instances(http, port, daemon, {f"{base}-1", f"{base}-2"})
    before = daemon.children()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        now = daemon.children()
        if len(now) == 2 and victim not in now and "supervisor.child_restarted" in daemon.output:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no restart: {daemon.children()}\n{daemon.output}")
    assert daemon.children() - before, "a new process took the dead one's place"
    # both instance ids answer again, the restarted one under its old name
    await ready_instances(http, port, daemon, {f"{base}-1", f"{base}-2"})
    assert "supervisor.child_died" in daemon.output
    assert "status=-9" in daemon.output
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait_exit(20.0) == 0, daemon.output


async def test_an_api_process_queues_and_a_separate_worker_process_delivers(
    tmp_path: Path, redis_url: str, serve: Any, http: aiohttp.ClientSession
) -> None:
    api_port, worker_port = free_port(), free_port()
    config = write_config(tmp_path, api_port, redis_url)
    api = serve(config, "--role", "api")
    base = instance_base(config)
    (answer,) = (await ready_instances(http, api_port, api, {base})).values()
    assert answer["checks"]["dispatcher"]["role"] == "api"
    assert answer["checks"]["dispatcher"]["workers"] == 0
    url = f"http://127.0.0.1:{api_port}"
    body = {"user_id": "u2", "channel": "email", "email": "split@example.com"}
    async with http.post(f"{url}/v1/otp", json=body) as resp:
        assert resp.status == 202, await resp.text()
        task_id = (await resp.json())["deliveries"][0]["task_id"]

    async def status() -> str:
        async with http.get(f"{url}/v1/tasks/{task_id}") as resp:
            value: str = (await resp.json())["status"]
            return value

    await asyncio.sleep(0.5)
    assert await status() == "queued"  # nothing in the api process delivers
    assert latest(tmp_path / "outbox", "split@example.com") is None

    worker = serve(
        config,
        "--role",
        "worker",
        OTPD_SERVER__PORT=str(worker_port),
        OTPD_SERVER__INSTANCE_ID=f"{base}-worker",
    )
    (health,) = (await ready_instances(http, worker_port, worker, {f"{base}-worker"})).values()
    assert health["checks"]["dispatcher"]["role"] == "worker"
    for _ in range(500):
        if await status() == "sent":
            break
        await asyncio.sleep(0.02)
    assert await status() == "sent"
    entry = latest(tmp_path / "outbox", "split@example.com")
    assert entry is not None
    assert find_code(entry, 6) is not None
    # the worker serves health and metrics, not the API
    wurl = f"http://127.0.0.1:{worker_port}"
    async with http.get(f"{wurl}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{wurl}/metrics") as resp:
        assert resp.status == 200
    async with http.post(f"{wurl}/v1/otp", json=body) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    for daemon in (api, worker):
        daemon.proc.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit(20.0) == 0, daemon.output


def serve_fails(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otpd", "serve", "--config", str(config), *args],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--processes", "2"), 'otpd: --processes 2 needs store.backend = "redis"'),
        (("--role", "api"), 'otpd: --role api needs store.backend = "redis"'),
        (("--role", "worker"), 'otpd: --role worker needs store.backend = "redis"'),
    ],
)
def test_the_memory_store_with_processes_or_a_role_is_refused_with_one_line(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    config = write_config(tmp_path, free_port(), None)
    proc = serve_fails(tmp_path, config, *args)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(expected), line
    assert proc.stdout == ""


def test_processes_with_redis_down_exit_1_with_the_childs_one_line(tmp_path: Path) -> None:
    down = free_port()  # nothing listens there
    config = write_config(tmp_path, free_port(), f"redis://127.0.0.1:{down}/0")
    proc = serve_fails(tmp_path, config, "--processes", "2")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    (line,) = proc.stderr.splitlines()
    assert line == f"otpd: cannot reach the store at redis://127.0.0.1:{down}/0: Connection refused"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_otpd_refuses_a_role_its_store_cannot_hand_over(make_config: ConfigFactory) -> None:
    with pytest.raises(ConfigError, match=r"dispatch\.durable"):
        Otpd(make_config(), role="worker")
    with pytest.raises(ConfigError, match="unknown role"):
        Otpd(make_config(), role="sideways")  # type: ignore[arg-type]


async def test_children_stop_by_themselves_when_the_supervisor_is_killed(
    tmp_path: Path, redis_url: str, serve: Any, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, redis_url)
    base = instance_base(config)
    daemon = serve(config, "--processes", "2")
    await ready_instances(http, port, daemon, {f"{base}-1", f"{base}-2"})
    children = daemon.children()
    assert len(children) == 2
    daemon.proc.kill()  # the supervisor only: its children are orphans now
    daemon.proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    alive = set(children)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if running(pid)}
        await asyncio.sleep(0.05)
    assert not alive, daemon.output
    assert daemon.output.count("otpd.supervisor_gone") == 2, daemon.output
    assert port_is_free(port)
