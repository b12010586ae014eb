"""``store.fallback = "memory"`` over HTTP: Redis stopped mid-load and started again on
the same port, or down at start-up. Codes, links and tasks keep working from the local
store, ``/readyz`` says degraded, the SMS budget fails closed, and once Redis is back the
tasks accepted meanwhile are delivered and new state lives in Redis."""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import re
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from otpd.app import Otpd
from otpd.config import Config, load_config
from otpd.store.fallback import FallbackStore
from otpd.store.redis import RedisStore
from tests.api.helpers import EMAIL, MOBILE, Client, error_of, link_in, parse_eml, token_of
from tests.conftest import TEST_SECRET, ConfigFactory, RestartableRedis, open_client, wait_idle


def fallback_config(tmp_path: Path, url: str, **sections: dict[str, Any]) -> Config:
    data: dict[str, dict[str, Any]] = {
        "security": {"secret_key": TEST_SECRET},
        "outbox": {"dir": str(tmp_path / "outbox")},
        "store": {
            "backend": "redis",
            "redis_url": url,
            "fallback": "memory",
            "socket_timeout_seconds": 0.5,
        },
        "dispatch": {
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.05,
            "drain_timeout_seconds": 2.0,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(data=data, env={})


def primary(daemon: Otpd) -> RedisStore:
    assert isinstance(daemon.store, FallbackStore)
    assert isinstance(daemon.store.primary, RedisStore)
    return daemon.store.primary


async def in_redis(daemon: Otpd, key: str) -> bool:
    raw = aioredis.Redis.from_url(daemon.config.store.redis_url)
    try:
        return bool(await raw.exists(key))
    finally:
        await raw.aclose()


async def readyz(client: Client) -> dict[str, Any]:
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def until_restored(client: Client, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while (await readyz(client))["degraded"]:
            await asyncio.sleep(0.05)


async def sent_task(client: Client, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The task once it is final, polled over HTTP (``wait_idle`` asks Redis too)."""
    async with asyncio.timeout(timeout):
        while True:
            resp = await client.get(f"/v1/tasks/{task_id}")
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            if body["status"] in ("sent", "failed"):
                assert body["status"] == "sent", body
                return body
            await asyncio.sleep(0.02)


async def issue_code(client: Client, config: Config, user_id: str) -> str:
    """Issue a code by email and read it from the outbox file its task names."""
    resp = await client.post(
        "/v1/otp", json={"user_id": user_id, "channel": "email", "email": f"{user_id}@example.com"}
    )
    assert resp.status == 202, await resp.text()
    (delivery,) = (await resp.json())["deliveries"]
    task = await sent_task(client, delivery["task_id"])
    eml = Path(config.outbox.dir) / task["provider_message_id"]
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    match = re.match(r"(\d+) is your", str(msg["Subject"]))
    assert match, msg["Subject"]
    return match.group(1)


async def verified(client: Client, user_id: str, code: str) -> bool:
    resp = await client.post("/v1/otp/verify", json={"user_id": user_id, "code": code})
    assert resp.status == 200, await resp.text()
    result: bool = (await resp.json())["verified"]
    return result


def gauge(daemon: Otpd) -> float | None:
    return daemon.metrics.registry.get_sample_value("otpd_store_degraded")


@pytest.mark.slow
async def test_redis_stopped_mid_load_gives_no_5xx_and_every_accepted_task_is_sent(
    tmp_path: Path,
) -> None:
    # with its data when it comes back: every task accepted at any time can be checked
    server = RestartableRedis(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        config = fallback_config(tmp_path, server.url)
        async with Otpd(config) as daemon:
            client = await open_client(daemon)
            try:
                statuses: collections.Counter[int] = collections.Counter()
                accepted: list[str] = []
                stop = asyncio.Event()

                async def load(worker: int) -> None:
                    n = 0
                    while not stop.is_set():
                        user = f"load{worker}-{n}"
                        n += 1
                        body = {"user_id": user, "channel": "email", "email": f"{user}@example.com"}
                        resp = await client.post("/v1/otp", json=body)
                        statuses[resp.status] += 1
                        if resp.status == 202:
                            accepted.extend(d["task_id"] for d in (await resp.json())["deliveries"])
                        resp = await client.post(
                            "/v1/otp/verify", json={"user_id": user, "code": "000000"}
                        )
                        statuses[resp.status] += 1

                loads = [asyncio.create_task(load(i)) for i in range(4)]
                await asyncio.sleep(0.3)
                assert (await readyz(client))["degraded"] is False
                server.stop()
                await asyncio.sleep(0.5)

                ready = await readyz(client)
                assert ready["status"] == "ready"
                assert ready["degraded"] is True
                assert ready["reason"].startswith("the store is unavailable")
                assert ready["checks"]["store"] == {
                    "ok": True,
                    "backend": "redis",
                    "degraded": True,
                    "reason": ready["reason"],
                }
                assert gauge(daemon) == 1
                during = len(accepted)
                # a code issued now verifies now, and another one after the outage
                code = await issue_code(client, config, "outage-now")
                assert await verified(client, "outage-now", code)
                later = await issue_code(client, config, "outage-later")
                await asyncio.sleep(0.3)

                server.start()
                await until_restored(client)
                assert gauge(daemon) == 0
                await asyncio.sleep(0.3)  # the load goes on against Redis
                stop.set()
                await asyncio.gather(*loads)
                assert not [s for s in statuses if s >= 500], statuses
                assert statuses[202] > 0 and during < len(accepted)

                assert await verified(client, "outage-later", later)
                code = await issue_code(client, config, "after")
                assert await in_redis(daemon, primary(daemon).layout.otp("after", "login"))
                assert await verified(client, "after", code)

                await wait_idle(daemon, timeout=30)
                for task_id in accepted:
                    resp = await client.get(f"/v1/tasks/{task_id}")
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["status"] == "sent", task_id
            finally:
                await client.close()
    finally:
        server.stop()


async def test_start_up_with_redis_down_serves_degraded_then_uses_redis(tmp_path: Path) -> None:
    server = RestartableRedis(tmp_path)  # nothing listens there yet
    try:
        config = fallback_config(tmp_path, server.url)
        async with Otpd(config) as daemon:
            client = await open_client(daemon)
            try:
                ready = await readyz(client)
                assert ready["degraded"] is True
                assert "cannot reach the store" in ready["reason"]
                metrics = await (await client.get("/metrics")).text()
                assert "otpd_store_degraded 1.0" in metrics
                code = await issue_code(client, config, "u1")
                assert await verified(client, "u1", code)
                assert not await verified(client, "u1", code)  # consumed

                # a link issued and confirmed during the outage
                resp = await client.post(
                    "/v1/email-verifications", json={"user_id": "u2", "email": EMAIL}
                )
                assert resp.status == 202, await resp.text()
                task = await sent_task(client, (await resp.json())["task_id"])
                msg = parse_eml(Path(config.outbox.dir) / task["provider_message_id"])
                token = token_of(link_in(msg))
                resp = await client.post("/v1/email-verifications/confirm", json={"token": token})
                assert resp.status == 200, await resp.text()

                pending = await issue_code(client, config, "u3")
                server.start()
                await until_restored(client)
                assert await verified(client, "u3", pending)  # issued on this instance
                code = await issue_code(client, config, "u4")
                assert await in_redis(daemon, primary(daemon).layout.otp("u4", "login"))
                assert await verified(client, "u4", code)
                await wait_idle(daemon)
            finally:
                await client.close()
    finally:
        server.stop()


async def test_sms_with_a_budget_is_refused_during_the_outage_and_email_goes_on(
    tmp_path: Path, restartable_redis: RestartableRedis
) -> None:
    config = fallback_config(
        tmp_path, restartable_redis.url, sms={"daily_budget": 1.0, "default_price": 0.05}
    )
    sms = {"user_id": "u1", "channel": "sms", "phone": MOBILE}
    async with Otpd(config) as daemon:
        client = await open_client(daemon)
        try:
            assert (await client.post("/v1/otp", json=sms)).status == 202
            restartable_redis.stop()
            for _ in range(2):
                resp = await client.post("/v1/otp", json=sms)
                details = await error_of(resp, 429, "sms_blocked")
                assert details["reason"] == "budget_unavailable"
                assert int(resp.headers["Retry-After"]) > 0
            resp = await client.post(
                "/v1/messages", json={"channel": "sms", "to": MOBILE, "text": "hi"}
            )
            details = await error_of(resp, 429, "sms_blocked")
            assert details["reason"] == "budget_unavailable"
            blocked = daemon.metrics.registry.get_sample_value(
                "otpd_sms_blocked_total", {"reason": "budget_unavailable"}
            )
            assert blocked == 3
            code = await issue_code(client, config, "u2")  # email needs no budget
            assert await verified(client, "u2", code)

            restartable_redis.start()
            await until_restored(client)
            assert (await client.post("/v1/otp", json=sms)).status == 202
        finally:
            await client.close()


async def test_without_a_fallback_readyz_has_no_degraded_field(
    make_config: ConfigFactory,
) -> None:
    async with Otpd(make_config("redis")) as daemon:
        client = await open_client(daemon)
        try:
            body = await readyz(client)
            assert "degraded" not in body and "degraded" not in body["checks"]["store"]
            assert gauge(daemon) == 0
        finally:
            await client.close()
