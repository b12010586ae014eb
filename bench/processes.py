"""``otpd serve --processes 1`` against ``--processes 2`` on one private Redis: requests per
second of POST /v1/otp/verify and POST /v1/otp under wrk, and the N=2/N=1 ratio.

    .venv/bin/python bench/processes.py [--seconds 10] [--connections 64] [--threads 1]

Each run is a real ``otpd serve`` (dev outbox, durable queue, limits out of the way,
logging at warning) on a free port with its own key prefix. Verify first issues
``--users`` codes and then sends wrong codes for those users (each verify is one script
on Redis, whatever its answer); issue sends a fresh user id per request, so every request
also queues and delivers one email into the outbox. wrk (``apt-get install wrk``) runs on
the same machine as otpd and Redis, so it takes CPU from both runs alike.

Besides requests per second it prints the CPU the otpd processes used during each run
(user + system time of the process and its children, from /proc): ``cores`` is that CPU
over the run's wall time (at most 1 for one process), ``cpu ms/req`` what one request cost.
On a machine other work keeps busy, ``cores`` shows how much of it otpd got at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._redis import private_redis

SECRET = "bench-processes-secret-0123456789abcdef-0123"
HIGH = 10**7

VERIFY_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local users = %(users)d
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
request = function()
  local n = math.random(0, users - 1)
  return wrk.format(nil, "/v1/otp/verify", nil,
    string.format('{"user_id": "bench-%%d", "code": "000000"}', n))
end
"""

ISSUE_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local prefix = "w"
local n = 0
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  prefix = "w" .. tostring(math.random(0, 1000000000))
end
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/otp", nil, string.format(
    '{"user_id": "%s-%d", "channel": "email", "email": "%s-%d@example.com"}',
    prefix, n, prefix, n))
end
"""


@dataclass(frozen=True)
class Result:
    processes: int
    workload: str
    requests_per_second: float
    non_2xx: int
    errors: str
    cores: float
    cpu_ms_per_request: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` and its live children (the supervisor's processes)."""
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total + sum(cpu_seconds(int(child)) for child in children)


def write_config(workdir: Path, port: int, redis_url: str) -> Path:
    prefix = f"bp{uuid.uuid4().hex[:8]}:"
    text = f"""
[server]
port = {port}
instance_id = "bench-{port}"
max_connections = 4096
[security]
secret_key = "{SECRET}"
[store]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
[outbox]
dir = "{workdir / "outbox"}"
[logging]
level = "warning"
[otp]
per_user_hour = {HIGH}
per_user_day = {HIGH}
per_ip_hour = {HIGH}
[email]
per_recipient_hour = {HIGH}
global_hour = {HIGH}
[dispatch]
workers = 8
queue_size = 1000000
"""
    path = workdir / f"otpd-{port}.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def otpd_serve(config: Path, processes: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "otpd",
                "serve",
                "--config",
                str(config),
                "--processes",
                str(processes),
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("OTPD_")},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: the supervisor's children
                proc.wait()


async def wait_ready(url: str, processes: int, proc: subprocess.Popen[bytes]) -> None:
    """Until ``processes`` distinct instance ids answered /readyz."""
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        while len(seen) < processes:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"otpd serve --processes {processes} did not start")
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        seen.add((await resp.json())["checks"]["dispatcher"]["instance_id"])
            await asyncio.sleep(0.05)


async def issue_codes(url: str, users: int) -> None:
    async with aiohttp.ClientSession() as http:
        for n in range(users):
            body = {"user_id": f"bench-{n}", "channel": "email", "email": f"b{n}@example.com"}
            async with http.post(f"{url}/v1/otp", json=body) as resp:
                if resp.status != 202:
                    raise SystemExit(f"issue failed: {resp.status} {await resp.text()}")


def wrk(url: str, script: str, workdir: Path, args: argparse.Namespace) -> tuple[float, int, str]:
    lua = workdir / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    lua.write_text(script)
    out = subprocess.run(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.seconds}s",
            "--latency",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return (
        float(rate.group(1)),
        int(non_2xx.group(1)) if non_2xx else 0,
        errors.group(0) if errors else "",
    )


def run(processes: int, redis_url: str, args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="otpd-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(workdir, port, redis_url)
        log = workdir / "otpd.log"
        results: list[Result] = []
        with otpd_serve(config, processes, log) as proc:
            asyncio.run(wait_ready(url, processes, proc))
            asyncio.run(issue_codes(url, args.users))
            for workload, script in (
                ("verify", VERIFY_LUA % {"users": args.users}),
                ("issue", ISSUE_LUA),
            ):
                cpu, wall = cpu_seconds(proc.pid), time.monotonic()
                rate, non_2xx, errors = wrk(url, script, workdir, args)
                cpu, wall = cpu_seconds(proc.pid) - cpu, time.monotonic() - wall
                requests = max(1.0, rate * args.seconds)
                results.append(
                    Result(
                        processes,
                        workload,
                        rate,
                        non_2xx,
                        errors,
                        cpu / wall,
                        1000 * cpu / requests,
                    )
                )
        if proc.returncode != 0:
            print(f"otpd serve --processes {processes} exited {proc.returncode}", file=sys.stderr)
            print(log.read_text()[-2000:], file=sys.stderr)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--users", type=int, default=200, help="codes issued before verify")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    print(
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} wrk -t{args.threads} "
        f"-c{args.connections} -d{args.seconds}s (numbers are noisy on a shared machine)"
    )
    with private_redis() as redis_url:
        results = [r for n in (1, 2) for r in run(n, redis_url, args)]
    rates = {(r.processes, r.workload): r.requests_per_second for r in results}
    print(
        f"{'processes':>9}  {'workload':<8}{'req/s':>8}{'cores':>7}{'cpu ms/req':>12}"
        f"{'non-2xx':>9}  socket errors"
    )
    for r in results:
        print(
            f"{r.processes:>9}  {r.workload:<8}{r.requests_per_second:>8,.0f}{r.cores:>7.2f}"
            f"{r.cpu_ms_per_request:>12.2f}{r.non_2xx:>9}  {r.errors or '-'}"
        )
    for workload in ("verify", "issue"):
        ratio = rates[(2, workload)] / rates[(1, workload)]
        print(f"{workload}: N=2/N=1 = {ratio:.2f}")
    print(json.dumps({f"{w}_n{n}": round(v) for (n, w), v in rates.items()}))


if __name__ == "__main__":
    main()
