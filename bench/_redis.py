"""A private redis-server (or REDIS_URL) and a private Redis Cluster (or REDIS_CLUSTER_URL)
for benchmarks, stopped on exit."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["percentiles", "private_cluster", "private_redis"]

DEPLOY_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "redis-cluster.sh"


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server or set REDIS_URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_ports(count: int = 6) -> list[str]:
    """Ports free together with their bus port (+10000), below the ephemeral range so that
    outgoing connections do not take them meanwhile."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 22768)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return [str(port) for port in ports]


@contextlib.contextmanager
def private_cluster() -> Iterator[str]:
    """A 3-primary/3-replica Redis Cluster on free loopback ports, started and stopped with
    deploy/redis-cluster.sh; yields the seed URL."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise SystemExit(
            "redis-server/redis-cli not found: apt-get install redis-server redis-tools"
        )
    with tempfile.TemporaryDirectory() as workdir:
        ports = _cluster_ports()
        started = subprocess.run(
            [str(DEPLOY_SCRIPT), "start", workdir, *ports],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            if started.returncode != 0:
                raise SystemExit(f"deploy/redis-cluster.sh start failed: {started.stderr.strip()}")
            yield f"redis://127.0.0.1:{ports[0]}/0"
        finally:
            subprocess.run([str(DEPLOY_SCRIPT), "stop", workdir], capture_output=True, check=False)


def percentiles(samples: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[int, float]:
    ordered = sorted(samples)
    return {p: ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] for p in points}
