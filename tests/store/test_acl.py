"""The Redis ACL that docs/deployment.md gives operators is enough for otpd and no wider: a
full walkthrough (codes, links, messages, the durable queue, dead letters, health) runs as a
user created with exactly that line, on a standalone server and on a cluster, and Redis logs
no denied command, key or script."""

from __future__ import annotations

import contextlib
import re
import shlex
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from otpd.app import Otpd
from otpd.config import Config, load_config
from otpd.models import VerifyReason
from tests.api.helpers import MOBILE, body_of, link_in, newest_mail, token_of
from tests.conftest import TEST_SECRET, free_port, open_client, redis_server
from tests.redis_topologies import ClusterSetup, SentinelSetup

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
LUA = Path(__file__).resolve().parents[2] / "otpd" / "store" / "redis" / "lua"
ADDRESS = "jane.doe@example.com"
PASSWORD = "acl-test-password-9f1c"


def documented_acl() -> list[str]:
    """The rules (after the user name) of the one ``ACL SETUSER otpd ...`` line in
    docs/deployment.md."""
    lines = [line for line in DOC.read_text().splitlines() if line.startswith("ACL SETUSER otpd ")]
    assert len(lines) == 1, f"docs/deployment.md holds {len(lines)} ACL SETUSER otpd lines"
    return shlex.split(lines[0])[3:]


def acl_for_test() -> list[str]:
    """The documented rules with the test's password in place of the placeholder."""
    rules = documented_acl()
    passwords = [i for i, rule in enumerate(rules) if rule.startswith(">")]
    assert len(passwords) == 1, rules
    rules[passwords[0]] = f">{PASSWORD}"
    return rules


def allowed_commands() -> set[str]:
    return {rule[1:].lower() for rule in documented_acl() if rule.startswith("+")}


def walkthrough_config(tmp_path: Path, url: str, **store: Any) -> Config:
    return load_config(
        data={
            "security": {"secret_key": TEST_SECRET},
            "outbox": {"dir": str(tmp_path / "outbox")},
            "store": {"backend": "redis", "redis_url": url, **store},
            # one attempt, and SMS through a Twilio nobody listens for: a dead letter quickly
            "dispatch": {"durable": True, "max_attempts": 1, "partitions": 4},
            "sms": {"providers": ["twilio"]},
            "twilio": {
                "account_sid": "AC" + "0" * 32,
                "auth_token": "t" * 32,
                "from_number": "+14155550100",
                "base_url": f"http://127.0.0.1:{free_port()}",
            },
        },
        env={},
    )


async def walkthrough(config: Config) -> None:
    """What a day of otpd does to Redis, through the HTTP API."""
    async with Otpd(config) as daemon:
        client = await open_client(daemon)
        try:
            resp = await client.post(
                "/v1/otp", json={"user_id": "42", "channel": "email", "email": ADDRESS}
            )
            assert resp.status == 202, await resp.text()
            await daemon.dispatcher.wait_idle()
            code = re.search(r"\b(\d{6})\b", body_of(newest_mail(config, "otp_code"), "plain"))
            assert code is not None
            resp = await client.post("/v1/otp/verify", json={"user_id": "42", "code": "000000"})
            assert (await resp.json())["verified"] is False
            resp = await client.post("/v1/otp/verify", json={"user_id": "42", "code": code[1]})
            assert (await resp.json())["verified"] is True, await resp.text()

            resp = await client.post(
                "/v1/email-verifications", json={"user_id": "42", "email": ADDRESS}
            )
            assert resp.status == 202, await resp.text()
            await daemon.dispatcher.wait_idle()
            token = token_of(link_in(newest_mail(config, "email_verification")))
            resp = await client.post("/v1/email-verifications/confirm", json={"token": token})
            assert resp.status == 200, await resp.text()

            resp = await client.post(
                "/v1/password-resets", json={"user_id": "42", "email": ADDRESS}
            )
            assert resp.status == 202, await resp.text()
            await daemon.dispatcher.wait_idle()
            token = token_of(link_in(newest_mail(config, "password_reset")))
            resp = await client.post("/v1/password-resets/check", json={"token": token})
            assert resp.status == 200, await resp.text()
            resp = await client.post("/v1/password-resets/confirm", json={"token": token})
            assert resp.status == 200, await resp.text()

            message = {"channel": "email", "to": ADDRESS, "subject": "Hi", "text": "Hello"}
            task_ids = set()
            for _ in range(2):  # the same idempotency key: one task
                resp = await client.post(
                    "/v1/messages", json={**message, "idempotency_key": "order-1"}
                )
                assert resp.status == 202, await resp.text()
                task_ids.add((await resp.json())["task_id"])
                await daemon.dispatcher.wait_idle()
            assert len(task_ids) == 1
            resp = await client.get(f"/v1/tasks/{task_ids.pop()}")
            assert (await resp.json())["status"] == "sent"

            resp = await client.post(
                "/v1/messages", json={"channel": "sms", "to": MOBILE, "text": "Shipped"}
            )
            assert resp.status == 202, await resp.text()
            sms_task = (await resp.json())["task_id"]
            await daemon.dispatcher.wait_idle()
            resp = await client.get("/v1/dead-letters")
            dead = [d["task_id"] for d in (await resp.json())["dead_letters"]]
            assert sms_task in dead
            resp = await client.post(f"/v1/dead-letters/{sms_task}/replay")
            assert resp.status == 202, await resp.text()
            await daemon.dispatcher.wait_idle()

            assert (await client.get("/readyz")).status == 200
            assert (await client.get("/v1/health/messaging")).status == 200
        finally:
            await client.close()


async def acl_log(admin: aioredis.Redis) -> list[Any]:
    entries: list[Any] = await admin.execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
    return entries


def test_the_documented_acl_allows_every_command_the_lua_scripts_run() -> None:
    called = {
        name.lower()
        for script in LUA.glob("*.lua")
        for name in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)", script.read_text())
    }
    assert called, "no redis.call found in the scripts"
    assert called <= allowed_commands(), sorted(called - allowed_commands())


def test_the_documented_acl_grants_no_keys_config_or_wildcard() -> None:
    rules = documented_acl()
    assert "-@all" in rules and "~otpd:*" in rules and "resetchannels" in rules
    assert not {"keys", "config", "flushall", "flushdb", "eval"} & allowed_commands()
    assert not [rule for rule in rules if rule.startswith("+@") or rule in ("~*", "allkeys")]


@contextlib.asynccontextmanager
async def acl_user(tmp_path: Path) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A private redis-server with the documented ACL user: an admin client, and the
    URL otpd connects with as that user."""
    with redis_server(tmp_path) as url:
        admin = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            await admin.execute_command("ACL", "SETUSER", "otpd", *acl_for_test())  # type: ignore[no-untyped-call]
            await admin.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
            port = url.rsplit(":", 1)[1].split("/")[0]
            yield admin, f"redis://otpd:{PASSWORD}@127.0.0.1:{port}/0"
        finally:
            await admin.aclose()


async def test_a_walkthrough_runs_as_the_documented_acl_user(tmp_path: Path) -> None:
    async with acl_user(tmp_path) as (admin, user_url):
        await walkthrough(walkthrough_config(tmp_path, user_url, key_prefix="otpd:"))
        assert await acl_log(admin) == []

        # and nothing beyond: no KEYS, no CONFIG, no key outside the prefix
        user = aioredis.Redis.from_url(user_url, decode_responses=True)
        try:
            for command in (("KEYS", "*"), ("CONFIG", "GET", "maxmemory"), ("GET", "x")):
                with pytest.raises(redis_errors.NoPermissionError):
                    await user.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            await user.aclose()


async def test_scripts_flushed_from_the_server_are_loaded_again_as_the_documented_acl_user(
    tmp_path: Path,
) -> None:
    async with acl_user(tmp_path) as (admin, user_url):
        async with Otpd(walkthrough_config(tmp_path, user_url, key_prefix="otpd:")) as daemon:
            await daemon.otp.issue(user_id="42", channel="email", email=ADDRESS)
            await admin.script_flush()  # as a restart or a failover leaves the server
            result = await daemon.otp.verify(user_id="42", code="000000")
            assert result.reason is VerifyReason.INVALID_CODE
        assert await acl_log(admin) == []  # SCRIPT LOAD, never EVAL


@pytest.mark.slow
async def test_a_walkthrough_runs_as_the_documented_acl_user_on_a_cluster(
    redis_cluster_env: ClusterSetup, tmp_path: Path
) -> None:
    # ACL users are per node: each one is told, as on a self-managed cluster
    admins = [
        aioredis.Redis(host=h, port=p, decode_responses=True)
        for h, p in _addresses(redis_cluster_env)
    ]
    try:
        for admin in admins:
            await admin.execute_command("ACL", "SETUSER", "otpd", *acl_for_test())  # type: ignore[no-untyped-call]
            await admin.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
        port = redis_cluster_env.seed_url.rsplit(":", 1)[1].split("/")[0]
        user_url = f"redis://otpd:{PASSWORD}@127.0.0.1:{port}/0"
        prefix = f"otpd:{uuid.uuid4().hex[:8]}:"  # the shared cluster: keys of this test only
        config = walkthrough_config(tmp_path, user_url, key_prefix=prefix, mode="cluster")
        await walkthrough(config)
        for admin in admins:
            assert await acl_log(admin) == []
        async with RedisCluster.from_url(user_url, decode_responses=True) as user:
            with pytest.raises(redis_errors.NoPermissionError):
                await user.execute_command("KEYS", "*")
    finally:
        for admin in admins:
            await admin.execute_command("ACL", "DELUSER", "otpd")  # type: ignore[no-untyped-call]
            await admin.aclose()


def _addresses(cluster: ClusterSetup) -> list[tuple[str, int]]:
    return [node.address for node in cluster.nodes if node.alive]


@pytest.mark.slow
async def test_a_walkthrough_runs_as_the_documented_acl_user_behind_sentinel(
    redis_sentinel_env: SentinelSetup, tmp_path: Path
) -> None:
    # the user on the primary and its replica (a failover makes the replica the primary)
    nodes = redis_sentinel_env.nodes
    admins = [aioredis.Redis(host=n.address[0], port=n.address[1]) for n in nodes]
    try:
        for admin in admins:
            await admin.execute_command("ACL", "SETUSER", "otpd", *acl_for_test())  # type: ignore[no-untyped-call]
            await admin.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
        config = walkthrough_config(
            tmp_path,
            f"redis://otpd:{PASSWORD}@/2",  # the docs' form: user, password and database only
            key_prefix=f"otpd:{uuid.uuid4().hex[:8]}:",
            mode="sentinel",
            sentinel_urls=list(redis_sentinel_env.sentinel_urls),
            sentinel_service=redis_sentinel_env.service,
        )
        await walkthrough(config)
        for admin in admins:
            assert await acl_log(admin) == []
        primary = redis_sentinel_env.primary
        user = aioredis.Redis(port=primary.port, username="otpd", password=PASSWORD, db=2)
        try:
            assert await user.exists(f"{config.store.key_prefix}q:{{q:0}}:ready") == 1
        finally:
            await user.aclose()
    finally:
        for admin in admins:
            await admin.execute_command("ACL", "DELUSER", "otpd")  # type: ignore[no-untyped-call]
            await admin.aclose()
