"""Redis Cluster and Redis Sentinel set-ups for tests: real redis-server processes on free
loopback ports in a work directory, started and stopped by context managers.

Start-up waits block (they run in fixtures); failovers are coroutines, so a daemon under
test keeps serving while one happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "MAX_CLUSTER_PORT",
    "NODE_TIMEOUT_MS",
    "SERVICE_NAME",
    "ClusterSetup",
    "Node",
    "SentinelSetup",
    "free_cluster_ports",
    "redis_cluster",
    "redis_sentinel",
    "topology_binary",
]

HOST = "127.0.0.1"
SERVICE_NAME = "otpd"
SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node's bus listens on its port + 10000
MAX_CLUSTER_PORT = 65535 - BUS_OFFSET
NODE_TIMEOUT_MS = 2000
START_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05

Role = Literal["primary", "replica", "sentinel"]

_PACKAGES = {"redis-server": "redis-server", "redis-cli": "redis-tools"}


def topology_binary(name: str) -> str:
    """A Redis binary the topologies need: skipped without it, failing under ``CI=true``
    (as ``redis_binary()`` in tests/conftest.py)."""
    binary = shutil.which(name)
    if binary is None:
        message = (
            f"{name} not found: install it (apt-get install {_PACKAGES.get(name, name)}) "
            "to run the Redis Cluster and Sentinel tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _sentinel_argv(config: Path) -> list[str]:
    sentinel = shutil.which("redis-sentinel")
    if sentinel is not None:
        return [sentinel, str(config)]
    return [topology_binary("redis-server"), str(config), "--sentinel"]


@dataclass(eq=False)
class Node:
    """One process of a set-up; ``role`` is as last seen by the set-up's helpers."""

    port: int
    role: Role
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


class _Ports:
    """Free loopback ports, none handed out twice in one set-up."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def pick(self, *, bus: bool = False) -> int:
        for _ in range(1000):
            port = _bind(0)
            if port is None or port in self.taken:
                continue
            if bus:
                bus_port = port + BUS_OFFSET
                # Redis refuses ports whose bus port would not exist.
                if port > MAX_CLUSTER_PORT or bus_port in self.taken or _bind(bus_port) is None:
                    continue
                self.taken.add(bus_port)
            self.taken.add(port)
            return port
        raise RuntimeError("no free loopback port found")


def free_cluster_ports(count: int) -> list[int]:
    """``count`` distinct ports, each free together with its bus port (port + 10000)."""
    ports = _Ports()
    return [ports.pick(bus=True) for _ in range(count)]


def _bind(port: int) -> int | None:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return None
        bound: int = s.getsockname()[1]
        return bound


class _Processes:
    """Every process a set-up starts; all of them stopped on exit, even after an error."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )


def _aclient(port: int) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(
        host=HOST,
        port=port,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        decode_responses=True,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )


def _call(port: int, *args: str) -> Any:
    with _client(port) as r:
        return r.execute_command(*args)


async def _acall(port: int, *args: str) -> Any:
    async with _aclient(port) as r:
        return await r.execute_command(*args)  # type: ignore[no-untyped-call]


def _start_server(
    processes: _Processes,
    ports: _Ports,
    workdir: Path,
    role: Role,
    options: Callable[[int], list[str]],
    *,
    bus: bool = False,
) -> Node:
    """A redis-server with ``options(port)`` on a free port, answering. A port taken between
    picking and binding makes the server exit: then it tries another one."""
    binary = topology_binary("redis-server")
    problem = ""
    for _ in range(3):
        port = ports.pick(bus=bus)
        node_dir = workdir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        log = node_dir / "redis.log"
        argv = [binary, *_server_options(port, node_dir, log), *options(port)]
        node = Node(port, role, processes.spawn(argv), log)
        problem = _wait_up(node)
        if not problem:
            return node
    raise RuntimeError(f"redis-server did not start: {problem}")


def _server_options(port: int, node_dir: Path, log: Path) -> list[str]:
    return [
        *("--port", str(port), "--bind", HOST, "--dir", str(node_dir)),
        *("--save", "", "--appendonly", "no", "--daemonize", "no"),
        *("--logfile", str(log), "--loglevel", "notice"),
        # a replica's first sync would wait 5 s for more replicas to share it
        *("--repl-diskless-sync-delay", "0"),
        # replicas may be gone at teardown: do not wait for them to catch up
        *("--shutdown-on-sigterm", "nosave now"),
    ]


def _wait_up(node: Node) -> str:
    """Empty once ``node`` answers; the reason when it exited instead."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not node.alive:
            return f"port {node.port} exited: {node.log_tail()}"
        try:
            server = _call(node.port, "INFO", "server")
        except redis.RedisError:
            time.sleep(POLL)
            continue
        # a server that took the port first answers too, until ours gives up
        if server.get("process_id") == node.process.pid:
            return ""
        time.sleep(POLL)
    node.process.kill()
    return f"no reply on port {node.port} after {START_TIMEOUT}s: {node.log_tail()}"


def _wait(check: Callable[[], str], timeout: float, what: str) -> float:
    """Block until ``check()`` finds no problem; the seconds it took."""
    started = time.monotonic()
    problem = "not checked"
    while time.monotonic() - started < timeout:
        try:
            problem = check()
        except redis.RedisError as exc:
            problem = repr(exc)
        if not problem:
            return time.monotonic() - started
        time.sleep(POLL)
    raise TimeoutError(f"{what} not reached after {timeout}s: {problem}")


async def _await(check: Callable[[], Awaitable[str]], timeout: float, what: str) -> float:
    """``_wait`` for coroutines: the loop keeps running the code under test meanwhile."""
    started = time.monotonic()
    problem = "not checked"
    while time.monotonic() - started < timeout:
        try:
            problem = await check()
        except redis.RedisError as exc:
            problem = repr(exc)
        if not problem:
            return time.monotonic() - started
        await asyncio.sleep(POLL)
    raise TimeoutError(f"{what} not reached after {timeout}s: {problem}")


# Redis Cluster


@dataclass(frozen=True)
class _Entry:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str
    slots: tuple[tuple[int, int], ...]

    @property
    def role(self) -> Role:
        return "primary" if "master" in self.flags else "replica"

    @property
    def healthy(self) -> bool:
        return not self.flags & {"fail", "fail?", "handshake", "noaddr"}


def _parse_nodes(text: str) -> list[_Entry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being migrated
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        address = fields[1].split("@", 1)[0]
        entries.append(
            _Entry(
                id=fields[0],
                port=int(address.rsplit(":", 1)[1]),
                flags=frozenset(fields[2].split(",")),
                master_id=fields[3],
                slots=tuple(slots),
            )
        )
    return entries


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


def _info(parsed: dict[str, Any]) -> dict[str, str]:
    """An INFO section as redis-py parses it, with every value as text."""
    return {key: str(value) for key, value in parsed.items()}


@dataclass
class _View:
    """What one cluster node reports."""

    port: int
    info: dict[str, str]
    entries: list[_Entry]
    replication: dict[str, str]
    listed: dict[int, int]  # primary port -> nodes CLUSTER SLOTS lists with its slots


def _view(port: int) -> _View:
    return _View(
        port,
        _parse_info(_call(port, "CLUSTER", "INFO")),
        _parse_nodes(_call(port, "CLUSTER", "NODES")),
        _info(_call(port, "INFO", "replication")),
        _listed(_call(port, "CLUSTER", "SLOTS")),
    )


async def _aview(port: int) -> _View:
    return _View(
        port,
        _parse_info(await _acall(port, "CLUSTER", "INFO")),
        _parse_nodes(await _acall(port, "CLUSTER", "NODES")),
        _info(await _acall(port, "INFO", "replication")),
        _listed(await _acall(port, "CLUSTER", "SLOTS")),
    )


def _listed(ranges: list[list[Any]]) -> dict[int, int]:
    # each range: first slot, last slot, the primary, then its replicas
    return {int(served[2][1]): len(served) - 2 for served in ranges}


@dataclass(eq=False)
class ClusterSetup:
    """A running Redis Cluster: the nodes, a seed URL, and helpers that change the topology
    and wait until every live node agrees on it again.

    Roles, ``primary_for_slot`` and ``replica_of`` reflect the last completed wait (start-up,
    ``failover``, ``wait_ok``): after ``kill`` they are stale until ``await wait_ok()``.
    """

    nodes: list[Node]
    _slots: list[tuple[int, int, int]] = field(
        default_factory=list, init=False
    )  # first, last, port
    _master_of: dict[int, int] = field(default_factory=dict, init=False)  # replica -> primary

    @property
    def seed_url(self) -> str:
        """The first live node's URL, for ``RedisCluster.from_url``."""
        return next(node for node in self.nodes if node.alive).url

    @property
    def primaries(self) -> list[Node]:
        return [node for node in self.nodes if node.alive and node.role == "primary"]

    @property
    def replicas(self) -> list[Node]:
        return [node for node in self.nodes if node.alive and node.role == "replica"]

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def primary_for_slot(self, slot: int) -> Node:
        for first, last, port in self._slots:
            if first <= slot <= last:
                return self.node(port)
        raise LookupError(f"slot {slot} is not served")

    def replica_of(self, primary: Node) -> Node:
        for replica, master in self._master_of.items():
            if master == primary.port and self.node(replica).alive:
                return self.node(replica)
        raise LookupError(f"node {primary.port} has no live replica")

    async def failover(self, replica: Node, *, option: str | None = None) -> float:
        """CLUSTER FAILOVER (``option``: FORCE or TAKEOVER) on ``replica``; waits until it is a
        primary and the cluster is ok on every live node. Returns the seconds it took."""
        if replica.role != "replica":
            raise ValueError(f"node {replica.port} is a {replica.role}, not a replica")
        started = time.monotonic()
        await _acall(replica.port, "CLUSTER", "FAILOVER", *([option] if option else []))

        async def promoted() -> str:
            views = [await _aview(node.port) for node in self.nodes if node.alive]
            if (role := _view_of(views, replica.port).replication.get("role")) != "master":
                return f"node {replica.port} reports role {role}"
            return self._agree(views)

        await _await(promoted, FAILOVER_TIMEOUT, f"failover to {replica.port}")
        return time.monotonic() - started

    def kill(self, node: Node) -> None:
        """SIGKILL ``node`` (no shutdown, no goodbye to the cluster)."""
        node.process.kill()
        node.process.wait()

    async def wait_ok(self, timeout: float = FAILOVER_TIMEOUT) -> float:
        """Until the live nodes agree that every slot is served by a live primary (after a
        ``kill``, once a replica took over). Returns the seconds it took."""

        async def ok() -> str:
            return self._agree([await _aview(node.port) for node in self.nodes if node.alive])

        return await _await(ok, timeout, "cluster_state:ok on every live node")

    def _wait_ready(self) -> float:
        def ready() -> str:
            return self._agree([_view(node.port) for node in self.nodes])

        return _wait(ready, START_TIMEOUT, "cluster_state:ok on every node")

    def _agree(self, views: list[_View]) -> str:
        """A problem with the cluster as the live nodes report it; empty when there is none,
        and then the roles and slots are taken from the reports."""
        live = {node.port for node in self.nodes if node.alive}
        first: dict[int, Role] | None = None
        for view in views:
            if view.info.get("cluster_state") != "ok":
                return f"node {view.port}: cluster_state:{view.info.get('cluster_state')}"
            if view.info.get("cluster_slots_ok") != str(SLOTS):
                return f"node {view.port}: cluster_slots_ok:{view.info.get('cluster_slots_ok')}"
            if view.info.get("cluster_known_nodes") != str(len(self.nodes)):
                return f"node {view.port} knows {view.info.get('cluster_known_nodes')} nodes"
            seen = {entry.port: entry for entry in view.entries}
            for entry in view.entries:
                if entry.slots and entry.port not in live:
                    return f"node {view.port}: slots still on dead node {entry.port}"
                if entry.port in live and not entry.healthy:
                    return f"node {view.port} sees {entry.port} as {','.join(entry.flags)}"
            roles = {port: seen[port].role for port in live if port in seen}
            if first is None:
                first = roles
            elif roles != first:
                return f"nodes disagree on roles: {first} vs {view.port}: {roles}"
            me = seen.get(view.port)
            if me is not None and me.role == "replica":
                master = next((e for e in view.entries if e.id == me.master_id), None)
                if master is not None and master.port in live:
                    link = view.replication.get("master_link_status")
                    if link != "up":
                        return f"replica {view.port}: master_link_status:{link}"
            # clients learn replicas from CLUSTER SLOTS, which leaves out a replica until
            # its replication offset is past 0 (hence --repl-ping-replica-period 1)
            for entry in view.entries:
                if entry.slots:
                    replicas = [
                        e for e in view.entries if e.master_id == entry.id and e.port in live
                    ]
                    if view.listed.get(entry.port) != 1 + len(replicas):
                        return f"node {view.port}: CLUSTER SLOTS lists {view.listed} nodes"
        self._learn(views[0].entries, first or {})
        return ""

    def _learn(self, entries: list[_Entry], roles: dict[int, Role]) -> None:
        by_id = {entry.id: entry for entry in entries}
        for node in self.nodes:
            if node.port in roles:
                node.role = roles[node.port]
        self._slots = sorted(
            (first, last, entry.port)
            for entry in entries
            if entry.role == "primary"
            for first, last in entry.slots
        )
        self._master_of = {
            entry.port: by_id[entry.master_id].port
            for entry in entries
            if entry.role == "replica" and entry.master_id in by_id
        }


def _view_of(views: list[_View], port: int) -> _View:
    return next(view for view in views if view.port == port)


@contextlib.contextmanager
def redis_cluster(
    workdir: Path, primaries: int = 3, replicas_per_primary: int = 1
) -> Iterator[ClusterSetup]:
    """A Redis Cluster of ``primaries`` x (1 + ``replicas_per_primary``) nodes on free ports,
    files in ``workdir``; stopped on exit."""
    topology_binary("redis-server")
    cli = topology_binary("redis-cli")
    processes = _Processes()
    ports = _Ports()
    try:
        nodes = [
            _start_server(
                processes,
                ports,
                workdir,
                "primary",
                lambda port: [
                    *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                    *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                    *("--repl-ping-replica-period", "1"),
                ],
                bus=True,
            )
            for _ in range(primaries * (1 + replicas_per_primary))
        ]
        create = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"{HOST}:{node.port}" for node in nodes),
                "--cluster-replicas",
                str(replicas_per_primary),
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        (workdir / "cluster-create.log").write_text(create.stdout + create.stderr)
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({create.returncode}): "
                f"{(create.stdout + create.stderr).strip().splitlines()[-3:]}"
            )
        cluster = ClusterSetup(nodes)
        cluster._wait_ready()
        yield cluster
    finally:
        processes.stop_all()


# Redis Sentinel


def _pairs(reply: list[Any] | dict[str, Any]) -> dict[str, str]:
    """A SENTINEL reply of field/value pairs (redis-py parses some of them into a dict)."""
    if isinstance(reply, dict):
        return {str(key): str(value) for key, value in reply.items()}
    return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


@dataclass(eq=False)
class SentinelSetup:
    """One primary, one replica and three sentinels monitoring them as ``service``."""

    primary: Node
    replica: Node
    sentinels: list[Node]
    service: str = SERVICE_NAME

    @property
    def sentinel_urls(self) -> list[str]:
        return [f"redis://{HOST}:{node.port}" for node in self.sentinels]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """For ``redis.asyncio.sentinel.Sentinel(...)``."""
        return [node.address for node in self.sentinels]

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, self.replica]

    async def failover(self) -> float:
        """SENTINEL FAILOVER via a sentinel, once the replica replicates (so failovers can
        follow each other); waits until every sentinel names the replica as primary and it
        says role master, then swaps ``primary`` and ``replica``. Returns the seconds it took.

        The old primary keeps role master, accepting writes, until a sentinel turns it into
        a replica ~10 s later (Sentinel's fixed INFO period): ``wait_replicating()`` waits
        for that.
        """
        started = time.monotonic()
        await self.wait_replicating()
        old, new = self.primary, self.replica
        sentinel = next(node for node in self.sentinels if node.alive)

        async def accepted() -> str:
            # INPROG while an earlier failover ends; the failover starts once it answers OK
            try:
                await _acall(sentinel.port, "SENTINEL", "FAILOVER", self.service)
            except redis.ResponseError as exc:
                return str(exc)
            return ""

        await _await(accepted, FAILOVER_TIMEOUT, "SENTINEL FAILOVER accepted")

        async def switched() -> str:
            for node in self.sentinels:
                if node.alive:
                    reply = await _acall(
                        node.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                    )
                    if int(reply[1]) != new.port:
                        return f"sentinel {node.port} names {reply[1]} as primary"
            role = (await _acall(new.port, "ROLE"))[0]
            return "" if role == "master" else f"node {new.port} says role {role}"

        await _await(switched, FAILOVER_TIMEOUT, f"failover to {new.port}")
        self.primary, self.replica = new, old
        new.role, old.role = "primary", "replica"
        return time.monotonic() - started

    async def wait_replicating(self, timeout: float = FAILOVER_TIMEOUT) -> float:
        """Until ``replica`` replicates from ``primary`` and every sentinel agrees (instant
        after start-up, ~10 s after a failover). Returns the seconds it took."""

        async def steady() -> str:
            return self._problem(
                [await _asentinel_view(node.port, self.service) for node in self.sentinels],
                _info(await _acall(self.replica.port, "INFO", "replication")),
            )

        return await _await(steady, timeout, f"{self.replica.port} replicating")

    def _wait_ready(self) -> float:
        def ready() -> str:
            return self._problem(
                [_sentinel_view(node.port, self.service) for node in self.sentinels],
                _info(_call(self.replica.port, "INFO", "replication")),
            )

        return _wait(ready, START_TIMEOUT, "sentinels seeing the replica and each other")

    def _problem(self, views: list[_SentinelView], replication: dict[str, str]) -> str:
        if replication.get("role") != "slave":
            return f"node {self.replica.port} says role {replication.get('role')}"
        if replication.get("master_port") != str(self.primary.port):
            return f"node {self.replica.port} replicates from {replication.get('master_port')}"
        if replication.get("master_link_status") != "up":
            return f"node {self.replica.port}: {replication.get('master_link_status')}"
        others = str(len(self.sentinels) - 1)
        for view in views:
            where = f"sentinel {view.port}"
            if view.master.get("port") != str(self.primary.port):
                return f"{where} monitors {view.master.get('port')}"
            if view.master.get("flags") != "master":
                return f"{where} flags the primary {view.master.get('flags')}"
            if view.master.get("num-other-sentinels") != others:
                return f"{where} sees {view.master.get('num-other-sentinels')} other sentinels"
            # the sentinels' link status of a replica lags by up to 10 s: its own INFO counts
            flags = view.replicas.get(self.replica.port, {}).get("flags")
            if flags != "slave":
                return f"{where}: replica {self.replica.port} flags {flags}"
            if not view.quorum.startswith("OK"):
                return f"{where}: {view.quorum}"
        return ""


@dataclass
class _SentinelView:
    port: int
    master: dict[str, str]
    replicas: dict[int, dict[str, str]]
    quorum: str


def _sentinel_view(port: int, service: str) -> _SentinelView:
    try:
        quorum = str(_call(port, "SENTINEL", "CKQUORUM", service))
    except redis.ResponseError as exc:
        quorum = str(exc)
    return _SentinelView(
        port,
        _pairs(_call(port, "SENTINEL", "MASTER", service)),
        _by_port(_call(port, "SENTINEL", "REPLICAS", service)),
        quorum,
    )


async def _asentinel_view(port: int, service: str) -> _SentinelView:
    try:
        quorum = str(await _acall(port, "SENTINEL", "CKQUORUM", service))
    except redis.ResponseError as exc:
        quorum = str(exc)
    return _SentinelView(
        port,
        _pairs(await _acall(port, "SENTINEL", "MASTER", service)),
        _by_port(await _acall(port, "SENTINEL", "REPLICAS", service)),
        quorum,
    )


def _by_port(flats: list[list[Any]]) -> dict[int, dict[str, str]]:
    replicas = [_pairs(flat) for flat in flats]
    return {int(replica["port"]): replica for replica in replicas}


@contextlib.contextmanager
def redis_sentinel(workdir: Path) -> Iterator[SentinelSetup]:
    """A primary, a replica of it and three sentinels (quorum 2) on free ports, files in
    ``workdir``; stopped on exit."""
    topology_binary("redis-server")
    processes = _Processes()
    ports = _Ports()
    try:
        primary = _start_server(processes, ports, workdir, "primary", lambda port: [])
        replica = _start_server(
            processes,
            ports,
            workdir,
            "replica",
            lambda port: ["--replicaof", HOST, str(primary.port)],
        )
        sentinels = [_start_sentinel(processes, ports, workdir, primary.port) for _ in range(3)]
        setup = SentinelSetup(primary, replica, sentinels)
        setup._wait_ready()
        yield setup
    finally:
        processes.stop_all()


def _start_sentinel(processes: _Processes, ports: _Ports, workdir: Path, primary: int) -> Node:
    problem = ""
    for _ in range(3):
        port = ports.pick()
        sentinel_dir = workdir / f"sentinel-{port}"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        log = sentinel_dir / "sentinel.log"
        config = sentinel_dir / "sentinel.conf"
        # a sentinel rewrites its config file, so each has its own, writable one
        config.write_text(
            f"port {port}\n"
            f"bind {HOST}\n"
            "daemonize no\n"
            f'dir "{sentinel_dir}"\n'
            f'logfile "{log}"\n'
            f"sentinel monitor {SERVICE_NAME} {HOST} {primary} 2\n"
            f"sentinel down-after-milliseconds {SERVICE_NAME} 1000\n"
            f"sentinel failover-timeout {SERVICE_NAME} 3000\n"
            f"sentinel parallel-syncs {SERVICE_NAME} 1\n"
        )
        node = Node(port, "sentinel", processes.spawn(_sentinel_argv(config)), log)
        problem = _wait_up(node)
        if not problem:
            return node
    raise RuntimeError(f"redis-sentinel did not start: {problem}")
