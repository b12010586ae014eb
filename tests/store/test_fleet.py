"""A fleet of daemons on one Redis Cluster: limits and single-use codes stay exact across
daemons, each operation costs the round trips its slots need, and any daemon answers for
what another accepted."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import Config, load_config
from otpd.models import Channel, Message, OtpIssued
from otpd.outbox import find_code, find_link, latest
from otpd.store.redis import RedisStore
from tests.api.helpers import Client, token_of
from tests.conftest import TEST_SECRET, open_client
from tests.redis_topologies import ClusterSetup

EMAIL = "fleet@example.com"
MOBILE = "+491701234567"  # a German mobile number: valid and SMS-capable
DAEMONS = 3
DELIVERY_TIMEOUT = 10.0

Fleet = list[tuple[Otpd, Client]]
StartFleet = Callable[..., Awaitable[Fleet]]


def fleet_config(
    cluster: ClusterSetup, key_prefix: str, outbox: Path, **sections: dict[str, Any]
) -> Config:
    """The one configuration every daemon of the fleet runs with (as ``make_config``, on
    the cluster)."""
    data: dict[str, dict[str, Any]] = {
        "security": {"secret_key": TEST_SECRET},
        "outbox": {"dir": str(outbox)},
        "dispatch": {
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.05,
            "drain_timeout_seconds": 2.0,
        },
        "store": {
            "backend": "redis",
            "mode": "cluster",
            "redis_url": cluster.seed_url,
            "key_prefix": key_prefix,
        },
        "sms": {"providers": ["console"]},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(data=data, env={})


@pytest.fixture
async def start_fleet(
    redis_cluster_env: ClusterSetup, key_prefix: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StartFleet]:
    """``await start_fleet(otp={...})``: ``count`` daemons of one configuration, each with
    an HTTP client; all of them closed at the end of the test."""
    async with AsyncExitStack() as stack:

        async def factory(count: int = DAEMONS, **sections: dict[str, Any]) -> Fleet:
            fleet: Fleet = []
            for i in range(count):
                # one configuration but the instance id, which names the daemon's queue
                # consumer (by default host and pid: the same for every daemon in this process)
                config = fleet_config(
                    redis_cluster_env,
                    key_prefix,
                    tmp_path / "outbox",
                    **sections,
                    server={"instance_id": f"fleet-{i}"},
                )
                daemon = await stack.enter_async_context(Otpd(config, clock=clock))
                client = await open_client(daemon)
                stack.push_async_callback(client.close)
                fleet.append((daemon, client))
            return fleet

        yield factory


def clients(fleet: Fleet) -> list[Client]:
    return [client for _, client in fleet]


async def post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


async def spread(fleet: Fleet, path: str, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """POST every body at once, the i-th through daemon ``i % len(fleet)``."""
    cs = clients(fleet)
    return await asyncio.gather(
        *(post(cs[i % len(cs)], path, body) for i, body in enumerate(bodies))
    )


async def task_settled(client: Client, task_id: str) -> dict[str, Any]:
    """The task as ``client``'s daemon shows it once some daemon of the fleet delivered it
    (the queue is shared: whoever reads it first sends it)."""
    async with asyncio.timeout(DELIVERY_TIMEOUT):
        while True:
            resp = await client.get(f"/v1/tasks/{task_id}")
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            if body["status"] in ("sent", "failed"):
                return body
            await asyncio.sleep(0.02)


async def issue_code(fleet: Fleet, user_id: str, via: int = 0) -> str:
    """Issue an email OTP through daemon ``via`` and read the code from the outbox."""
    daemon, client = fleet[via]
    status, body = await post(
        client, "/v1/otp", {"user_id": user_id, "channel": "email", "email": EMAIL}
    )
    assert status == 202, body
    (delivery,) = body["deliveries"]
    assert (await task_settled(client, delivery["task_id"]))["status"] == "sent"
    entry = latest(daemon.config.outbox.dir, EMAIL)
    assert entry is not None
    code = find_code(entry, daemon.config.otp.length)
    assert code is not None
    return code


def other_code(code: str) -> str:
    return str((int(code) + 1) % 10 ** len(code)).zfill(len(code))


# ---------------------------------------------------------------- exactness


async def test_a_code_verifies_once_across_the_fleet(start_fleet: StartFleet) -> None:
    fleet = await start_fleet()
    code = await issue_code(fleet, "v1")
    answers = await spread(fleet, "/v1/otp/verify", [{"user_id": "v1", "code": code}] * 50)
    assert {status for status, _ in answers} == {200}
    assert sum(body["verified"] for _, body in answers) == 1
    assert {body["reason"] for _, body in answers if not body["verified"]} == {"no_active_code"}


async def test_wrong_guesses_across_the_fleet_count_exactly_max_attempts(
    start_fleet: StartFleet,
) -> None:
    fleet = await start_fleet()
    max_attempts = fleet[0][0].config.otp.max_attempts
    code = await issue_code(fleet, "g1", via=1)
    wrong = {"user_id": "g1", "code": other_code(code)}
    answers = await spread(fleet, "/v1/otp/verify", [wrong] * 30)
    assert {status for status, _ in answers} == {200}
    bodies = [body for _, body in answers]
    assert not any(body["verified"] for body in bodies)
    # verify_otp.lua counts a wrong guess only while attempts < max, each guess seeing the
    # count the previous one left: the counted ones report every figure once
    counted = sorted(b["attempts_left"] for b in bodies if b["reason"] == "invalid_code")
    assert counted == list(range(max_attempts))
    refused = [b for b in bodies if b["reason"] != "invalid_code"]
    assert len(refused) == 30 - max_attempts
    assert {(b["reason"], b["attempts_left"]) for b in refused} == {("too_many_attempts", 0)}
    # the code is spent for good: even the right one is refused now, on any daemon
    for client in clients(fleet):
        status, body = await post(client, "/v1/otp/verify", {"user_id": "g1", "code": code})
        assert (status, body) == (
            200,
            {"verified": False, "reason": "too_many_attempts", "attempts_left": 0},
        )


def accepted_and_refused(answers: list[tuple[int, Any]]) -> tuple[int, list[Any]]:
    assert {status for status, _ in answers} <= {202, 429}, answers
    return sum(status == 202 for status, _ in answers), [b for s, b in answers if s == 429]


async def test_the_user_limit_holds_across_the_fleet(start_fleet: StartFleet) -> None:
    # the limits on other slots than the user's are far from full, so no reservation
    # given back late can refuse a request the user limit would let through
    fleet = await start_fleet(email={"per_recipient_hour": 100})
    per_user_hour = fleet[0][0].config.otp.per_user_hour
    body = {"user_id": "u1", "channel": "email", "email": EMAIL, "client_ip": "198.51.100.1"}
    accepted, refused = accepted_and_refused(await spread(fleet, "/v1/otp", [body] * 20))
    assert accepted == per_user_hour
    assert {(b["error"]["code"], b["error"]["details"]["scope"]) for b in refused} == {
        ("rate_limited", "user_hour")
    }


async def test_the_ip_limit_holds_across_the_fleet(start_fleet: StartFleet) -> None:
    fleet = await start_fleet(otp={"per_ip_hour": 4}, email={"per_recipient_hour": 100})
    bodies = [
        {"user_id": f"ip{i}", "channel": "email", "email": EMAIL, "client_ip": "198.51.100.2"}
        for i in range(12)
    ]
    accepted, refused = accepted_and_refused(await spread(fleet, "/v1/otp", bodies))
    assert accepted == 4
    assert {(b["error"]["code"], b["error"]["details"]["scope"]) for b in refused} == {
        ("rate_limited", "ip_hour")
    }


async def test_the_sms_recipient_limit_holds_across_the_fleet(start_fleet: StartFleet) -> None:
    fleet = await start_fleet(sms={"per_recipient_hour": 3})
    bodies = [{"user_id": f"s{i}", "channel": "sms", "phone": MOBILE} for i in range(10)]
    accepted, refused = accepted_and_refused(await spread(fleet, "/v1/otp", bodies))
    assert accepted == 3
    assert {(b["error"]["code"], b["error"]["details"]["scope"]) for b in refused} == {
        ("rate_limited", "sms_recipient_hour")
    }


async def test_the_sms_guard_range_velocity_holds_across_the_fleet(
    start_fleet: StartFleet,
) -> None:
    fleet = await start_fleet(sms={"prefix_max_numbers": 3})
    # ten numbers of one range (the first eight digits agree), one each
    bodies = [
        {"user_id": f"r{i}", "channel": "sms", "phone": f"+49170123456{i}"} for i in range(10)
    ]
    accepted, refused = accepted_and_refused(await spread(fleet, "/v1/otp", bodies))
    assert accepted == 3
    assert {(b["error"]["code"], b["error"]["details"]["reason"]) for b in refused} == {
        ("sms_blocked", "prefix_velocity")
    }


# ---------------------------------------------------------------- round trips


async def count_round_trips_on(
    nodes: list[str], op: Callable[[], Awaitable[object]]
) -> dict[str, list[str]]:
    """The commands clients sent to each of ``nodes`` (URLs) while ``op`` ran, read with
    MONITOR on every one of them (as ``count_round_trips`` in test_redis.py does for one).
    Commands a script runs inside Redis show up as ``lua`` clients and are not trips."""
    marker = f"marker-{uuid.uuid4().hex}"
    raws = [aioredis.Redis.from_url(url, decode_responses=True) for url in nodes]
    try:
        async with AsyncExitStack() as stack:
            monitors = [await stack.enter_async_context(raw.monitor()) for raw in raws]
            await op()
            for raw in raws:
                await raw.echo(marker)
            seen: dict[str, list[str]] = {}
            for url, monitor in zip(nodes, monitors, strict=True):
                seen[url] = await _until_marker(monitor, marker)
            return seen
    finally:
        for raw in raws:
            await raw.aclose()


async def _until_marker(monitor: Any, marker: str) -> list[str]:
    seen: list[tuple[str, str]] = []
    async for event in monitor.listen():
        source = f"{event.get('client_address')}:{event.get('client_port')}"
        if marker in event["command"]:
            # drop what the measuring connection itself sent (its handshake)
            return [cmd for src, cmd in seen if src != source]
        if event.get("client_type") != "lua":
            seen.append((source, event["command"]))
    raise AssertionError("MONITOR ended before the marker")


# What a client sends when it opens a connection: a pooled connection that the held
# queue loops left broken (cancelled in a blocking read) opens again on its next use, once.
HANDSHAKE = frozenset({"HELLO", "CLIENT", "AUTH", "SELECT", "READONLY"})


def name(cmd: str) -> str:
    return cmd.split()[0].upper()


def op_commands(seen: dict[str, list[str]]) -> dict[str, list[str]]:
    """The commands of the operation itself, connection handshakes left out."""
    return {url: [c for c in cmds if name(c) not in HANDSHAKE] for url, cmds in seen.items()}


def handshakes(seen: dict[str, list[str]]) -> int:
    return sum(name(c) in HANDSHAKE for cmds in seen.values() for c in cmds)


def names(seen: dict[str, list[str]]) -> Counter[str]:
    """How many commands of each name the nodes saw in all."""
    return Counter(name(cmd) for cmds in seen.values() for cmd in cmds)


def busy(seen: dict[str, list[str]]) -> dict[str, int]:
    return {url: len(cmds) for url, cmds in seen.items() if cmds}


async def queue_loops_ended() -> None:
    """Until no queue loop runs (the test's one daemon is the only one). A reader cancelled
    while redis-py opens its connection may still send one blocking read after
    ``hold_retries``, and deliver what arrives meanwhile: wait for it to end."""
    async with asyncio.timeout(5):
        while any(
            t.get_name().startswith("otpd-queue-") and not t.done() for t in asyncio.all_tasks()
        ):
            await asyncio.sleep(0.01)


def slot_of(key: str) -> int:
    return key_slot(key.encode())


async def test_issue_and_verify_cost_one_trip_per_slot_on_the_cluster(
    start_fleet: StartFleet, redis_cluster_env: ClusterSetup
) -> None:
    ((daemon, _),) = await start_fleet(count=1)
    daemon.dispatcher.queue.hold_retries()  # no background reads: only the request shows
    await queue_loops_ended()
    primaries = [node.url for node in redis_cluster_env.primaries]
    store, policy = daemon.store, daemon.limits
    assert isinstance(store, RedisStore)
    ip = "203.0.113.9"

    async def measure(channel: Channel, to: str) -> None:
        """One OTP issue by ``channel``: one EVALSHA per slot of its code and limits, on
        the node serving that slot, plus the task enqueue script on its partition's and
        the audit record on the user's (the slot of the code)."""
        address = {"email": to} if channel is Channel.EMAIL else {"phone": to}
        issued: list[OtpIssued] = []

        async def issue(user_id: str) -> None:
            issued.append(
                await daemon.otp.issue(
                    user_id=user_id, channel=channel.value, client_ip=ip, **address
                )
            )
            # the audit record goes after the answer, from the trail's writer: wait for it,
            # so that this operation's record is counted, and only this one's
            await daemon.audit.flush()

        await issue(f"warm-up-{channel}")  # the connections it needs open before measuring
        user = f"rt-{channel}"
        seen = await count_round_trips_on(primaries, lambda: issue(user))
        trips = op_commands(seen)
        (delivery,) = issued[-1].deliveries

        limits = policy.otp(user, ip) + policy.sending(Message(channel, to, ""))
        if channel is Channel.SMS:
            limits += daemon.sms_guard.limits(daemon.sms_guard.target(to))
        slots = {slot_of(store.layout.otp(user, "login"))}
        slots |= {slot_of(store.layout.limit(lim.bucket, lim.window)) for lim in limits}
        expected = Counter(redis_cluster_env.primary_for_slot(s).url for s in slots)
        task_slot = slot_of(store.layout.task(delivery.task_id))
        expected[redis_cluster_env.primary_for_slot(task_slot).url] += 1
        # the suppression list is read first, on the slot of the address's entry
        normalized = to.lower() if channel is Channel.EMAIL else to
        entry = store.layout.suppression(daemon.hasher.digest("suppression", normalized))
        expected[redis_cluster_env.primary_for_slot(slot_of(entry)).url] += 1
        audit_slot = slot_of(store.layout.audit_user(user))
        assert audit_slot == slot_of(store.layout.otp(user, "login"))
        expected[redis_cluster_env.primary_for_slot(audit_slot).url] += 1
        conversion = 0
        if channel is Channel.SMS:
            # the range's conversion sample: one script, on the one slot of every range
            target = daemon.sms_guard.target(to)
            conversion_slot = slot_of(store.layout.sms_samples(target.range_hash))
            expected[redis_cluster_env.primary_for_slot(conversion_slot).url] += 1
            conversion = 1
        print(
            f"{channel} issue: {sum(busy(trips).values())} commands over {len(busy(trips))} "
            f"nodes ({len(slots)} slots for the code and its {len(limits)} limits, plus the "
            f"task enqueue script and the audit record; {handshakes(seen)} connection "
            "handshakes besides)"
        )
        evals = len(slots) + 2 + conversion
        assert names(trips) == Counter({"EVALSHA": evals, "HGETALL": 1}), trips
        assert busy(trips) == dict(expected), trips

    await measure(Channel.EMAIL, EMAIL)
    await measure(Channel.SMS, MOBILE)

    async def verify_once() -> None:
        await daemon.otp.verify(user_id="rt-email", code="000000")
        await daemon.audit.flush()

    seen = await count_round_trips_on(primaries, verify_once)
    verify = op_commands(seen)
    print(
        f"verify: {sum(busy(verify).values())} commands over {len(busy(verify))} nodes "
        f"({handshakes(seen)} connection handshakes besides)"
    )
    # one script: the verify and its audit record, on the node of the user's slot
    assert names(verify) == Counter({"EVALSHA": 1})
    otp_node = redis_cluster_env.primary_for_slot(slot_of(store.layout.otp("rt-email", "login")))
    assert busy(verify) == {otp_node.url: 1}


# ---------------------------------------------------------------- the README walkthrough


async def test_the_readme_walkthrough_works_against_any_daemon(start_fleet: StartFleet) -> None:
    fleet = await start_fleet()
    one, two, three = clients(fleet)
    outbox = fleet[0][0].config.outbox.dir

    # an OTP issued on daemon 1 verifies on daemon 2
    code = await issue_code(fleet, "readme", via=0)
    assert await post(two, "/v1/otp/verify", {"user_id": "readme", "code": code}) == (
        200,
        {"verified": True},
    )

    # an email verification requested on daemon 3 confirms on daemon 1
    status, issued = await post(
        three, "/v1/email-verifications", {"user_id": "readme", "email": EMAIL}
    )
    assert status == 202, issued
    assert (await task_settled(three, issued["task_id"]))["status"] == "sent"
    entry = latest(outbox, EMAIL)
    assert entry is not None
    link = find_link(entry)
    assert link is not None
    assert await post(one, "/v1/email-verifications/confirm", {"token": token_of(link)}) == (
        200,
        {"user_id": "readme", "email": EMAIL},
    )

    # a message accepted by daemon 2 is delivered by the fleet, and every daemon shows it
    status, accepted = await post(
        two, "/v1/messages", {"channel": "email", "to": EMAIL, "subject": "Hi", "text": "Hello"}
    )
    assert status == 202, accepted
    task_id = accepted["task_id"]
    views = [await task_settled(client, task_id) for client in (one, two, three)]
    assert [view["status"] for view in views] == ["sent"] * DAEMONS
    assert views[0] == views[1] == views[2]
    entry = latest(outbox, EMAIL)
    assert entry is not None and entry.subject == "Hi"
