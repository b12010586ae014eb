"""The Redis Cluster and Redis Sentinel fixtures work: redis-py reaches them, their failover
helpers move the primary, and they stop every process they start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from tests.redis_topologies import (
    MAX_CLUSTER_PORT,
    NODE_TIMEOUT_MS,
    ClusterSetup,
    Node,
    SentinelSetup,
    free_cluster_ports,
    redis_cluster,
    redis_sentinel,
    topology_binary,
)

DEPLOY_SCRIPT = Path(__file__).parents[2] / "deploy" / "redis-cluster.sh"


@contextlib.asynccontextmanager
async def cluster_client(cluster: ClusterSetup) -> AsyncIterator[RedisCluster]:
    async with RedisCluster.from_url(cluster.seed_url, decode_responses=True) as client:
        yield client


@contextlib.asynccontextmanager
async def sentinel_for(setup: SentinelSetup) -> AsyncIterator[Sentinel]:
    sentinel = Sentinel(setup.sentinel_addresses, socket_timeout=2.0)  # type: ignore[no-untyped-call]
    try:
        yield sentinel
    finally:
        for client in sentinel.sentinels:
            await client.aclose()


@contextlib.asynccontextmanager
async def primary_client(setup: SentinelSetup) -> AsyncIterator[aioredis.Redis]:
    """``master_for(service)`` through the setup's sentinels; every connection closed."""
    async with sentinel_for(setup) as sentinel:
        primary = sentinel.master_for(setup.service, socket_timeout=2.0, decode_responses=True)
        try:
            yield primary
        finally:
            await primary.aclose()


def key_on(node: Node, cluster: ClusterSetup, prefix: str) -> str:
    """A fresh key whose slot ``node`` serves."""
    for i in range(10_000):
        key = f"{prefix}{i}"
        if cluster.primary_for_slot(key_slot(key.encode())) is node:
            return key
    raise AssertionError(f"no key found for node {node.port}")


async def read_on(node: Node, key: str, *, cluster: bool = True) -> str | None:
    """``key`` as ``node`` itself holds it (a cluster replica answers after READONLY)."""
    host, port = node.address
    async with aioredis.Redis(host=host, port=port, decode_responses=True) as direct:
        if cluster:
            await direct.execute_command("READONLY")  # type: ignore[no-untyped-call]
        value = await direct.get(key)
        return None if value is None else str(value)


async def replicated(node: Node, key: str, value: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while await read_on(node, key) != value:
            await asyncio.sleep(0.02)


async def test_cluster_serves_keys_on_every_primary(
    redis_cluster_env: ClusterSetup, key_prefix: str
) -> None:
    cluster = redis_cluster_env
    assert len(cluster.primaries) == 3 and len(cluster.replicas) == 3
    assert all(node.port <= MAX_CLUSTER_PORT for node in cluster.nodes)
    assert {cluster.replica_of(p).port for p in cluster.primaries} == {
        r.port for r in cluster.replicas
    }
    async with cluster_client(cluster) as client:
        assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3
        for primary in cluster.primaries:
            key = key_on(primary, cluster, key_prefix)
            await client.set(key, primary.port)
            assert await client.get(key) == str(primary.port)
            assert await read_on(primary, key) == str(primary.port)


async def test_cluster_runs_a_script_on_keys_sharing_a_hash_tag(
    redis_cluster_env: ClusterSetup, key_prefix: str
) -> None:
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
    tagged = [f"{key_prefix}{{user42}}:code", f"{key_prefix}{{user42}}:tries"]
    async with cluster_client(redis_cluster_env) as client:
        assert await client.eval(script, 2, *tagged, "123456") == 1
        assert await client.get(tagged[0]) == "123456"
        untagged = [f"{key_prefix}a", f"{key_prefix}b"]
        assert key_slot(untagged[0].encode()) != key_slot(untagged[1].encode())
        with pytest.raises(RedisClusterException, match="same key slot"):
            await client.eval(script, 2, *untagged, "123456")


async def test_sentinels_name_the_primary_and_its_replica(
    redis_sentinel_env: SentinelSetup, key_prefix: str
) -> None:
    setup = redis_sentinel_env
    assert setup.service == "otpd" and len(setup.sentinel_urls) == 3
    async with sentinel_for(setup) as sentinel:
        assert await sentinel.discover_master(setup.service) == setup.primary.address
        assert await sentinel.discover_slaves(setup.service) == [setup.replica.address]
    async with primary_client(setup) as primary:
        await primary.set(f"{key_prefix}k", "v")
        assert await primary.execute_command("WAIT", 1, 2000) == 1  # type: ignore[no-untyped-call]
        assert await primary.config_get("port") == {"port": str(setup.primary.port)}
    assert await read_on(setup.replica, f"{key_prefix}k", cluster=False) == "v"


@pytest.mark.slow
async def test_cluster_failover_promotes_the_replica_and_clients_follow(
    tmp_path: Path,
) -> None:
    with redis_cluster(tmp_path) as cluster:
        async with cluster_client(cluster) as client:
            primary = cluster.primaries[0]
            key = key_on(primary, cluster, "k")
            await client.set(key, "before")
            replica = cluster.replica_of(primary)

            # a manual failover waits for the replica to catch up: nothing is lost
            await cluster.failover(replica)

            assert replica.role == "primary" and primary.role == "replica"
            assert cluster.primary_for_slot(key_slot(key.encode())) is replica
            assert cluster.replica_of(replica) is primary
            assert await client.get(key) == "before"  # MOVED, then the new primary
            await client.set(key, "after")
            assert await read_on(replica, key) == "after"


@pytest.mark.slow
async def test_cluster_replaces_a_killed_primary(tmp_path: Path) -> None:
    with redis_cluster(tmp_path) as cluster:
        async with cluster_client(cluster) as client:
            primary = cluster.primaries[1]
            replica = cluster.replica_of(primary)
            key = key_on(primary, cluster, "k")
            await client.set(key, "kept")
            await replicated(replica, key, "kept")

            cluster.kill(primary)
            await cluster.wait_ok()

            assert not primary.alive and replica.role == "primary"
            assert await client.get(key) == "kept"


@pytest.mark.slow
async def test_sentinel_failover_moves_the_primary_with_its_data(tmp_path: Path) -> None:
    with redis_sentinel(tmp_path) as setup:
        old, new = setup.primary, setup.replica
        key = f"k{uuid.uuid4().hex}"
        async with primary_client(setup) as primary:
            await primary.set(key, "v")
            assert await primary.execute_command("WAIT", 1, 2000) == 1  # type: ignore[no-untyped-call]

        await setup.failover()

        assert (setup.primary, setup.replica) == (new, old)
        # a new client: an open one keeps talking to the old primary until it is demoted
        async with primary_client(setup) as primary:
            assert await primary.config_get("port") == {"port": str(new.port)}
            assert await primary.get(key) == "v"
            await primary.set(key, "w")
        await setup.wait_replicating()
        assert await read_on(old, key, cluster=False) == "w"
    assert not any(node.alive for node in [*setup.nodes, *setup.sentinels])


@pytest.mark.slow
def test_sentinel_setup_stops_every_process_when_the_body_raises(tmp_path: Path) -> None:
    started: list[Node] = []

    def body() -> None:
        with redis_sentinel(tmp_path) as setup:
            started.extend([*setup.nodes, *setup.sentinels])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    assert len(started) == 5
    assert all(node.process.returncode is not None for node in started)


async def run_script(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(DEPLOY_SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # gossip runs at the node timeout's pace: 2 s forms the cluster faster than 5 s
        env={**os.environ, "REDIS_CLUSTER_NODE_TIMEOUT_MS": str(NODE_TIMEOUT_MS)},
    )
    output = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, output
    return output


@pytest.mark.slow
async def test_deploy_script_starts_a_cluster_and_stops_it(tmp_path: Path) -> None:
    topology_binary("redis-server")
    topology_binary("redis-cli")
    ports = [str(port) for port in free_cluster_ports(6)]
    try:
        started = await run_script("start", str(tmp_path), *ports)
        assert f"redis://127.0.0.1:{ports[0]}/0" in started
        async with RedisCluster.from_url(f"redis://127.0.0.1:{ports[0]}/0") as client:
            assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3
            await client.set("k", "v")
            assert await client.get("k") == b"v"
    finally:
        stopped = await run_script("stop", str(tmp_path))
    assert "stopped 6 node(s)" in stopped
    assert not list(tmp_path.glob("*/redis.pid"))


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_a_missing_binary_skips_or_fails_under_ci(
    ci: str, outcome: type[BaseException], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="redis-cli not found"):
        topology_binary("redis-cli")
    with pytest.raises(outcome, match="redis-server not found"), redis_sentinel(tmp_path):
        pass
