"""The metrics an operator runs otpd by: requests by route pattern (never the raw path),
queue backlog and oldest task sampled at scrape time, dead letters, the SMS budget."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import DispatchConfig, load_config
from otpd.dispatch.queue import InProcessQueue, Job
from otpd.metrics import UNMATCHED_ROUTE, Metrics
from otpd.models import Channel, Message, TaskRecord, TaskStatus
from otpd.store.memory import MemoryStore
from otpd.store.redis import RedisStore
from otpd.store.redis.streams import TaskStreams
from tests.api.helpers import Client
from tests.conftest import ConfigFactory, open_client
from tests.providers.smtp_server import SmtpSink

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape by (name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def scrape(client: Client) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    return samples(await resp.text())


@pytest.fixture
async def serve(make_config: ConfigFactory, clock: FakeClock) -> AsyncIterator[Any]:
    """``await serve(**sections)``: an open daemon on the memory store and its client."""
    async with AsyncExitStack() as stack:

        async def factory(**sections: dict[str, Any]) -> tuple[Otpd, Client]:
            daemon = await stack.enter_async_context(
                Otpd(make_config("memory", **sections), clock=clock)
            )
            client = await open_client(daemon)
            stack.push_async_callback(client.close)
            return daemon, client

        yield factory


async def test_requests_are_counted_by_route_pattern_never_by_raw_path(serve: Any) -> None:
    _, client = await serve()
    for _ in range(2):
        resp = await client.get(f"/v1/tasks/{uuid.uuid4().hex}")
        assert resp.status == 404
    for i in range(3):  # three different unknown paths: still one series
        assert (await client.get(f"/no/such/path/{i}")).status == 404
    assert (await client.get("/healthz")).status == 200
    text = await (await client.get("/metrics")).text()
    found = samples(text)
    route = "/v1/tasks/{task_id}"
    assert value(found, "otpd_http_requests_total", route=route, method="GET", status="404") == 2
    assert value(found, "otpd_http_request_duration_seconds_count", route=route, method="GET") == 2
    unmatched = {"route": UNMATCHED_ROUTE, "method": "GET", "status": "404"}
    assert value(found, "otpd_http_requests_total", **unmatched) == 3
    ok = {"route": "/healthz", "method": "GET", "status": "200"}
    assert value(found, "otpd_http_requests_total", **ok) == 1
    assert "/no/such/path" not in text
    routes = {dict(labels)["route"] for name, labels in found if name == "otpd_http_requests_total"}
    assert routes == {route, UNMATCHED_ROUTE, "/healthz"}


async def test_a_wrong_or_unknown_method_adds_no_series_of_its_own(serve: Any) -> None:
    _, client = await serve()
    assert (await client.request("DELETE", "/healthz")).status == 405
    assert (await client.request("PROPFIND", "/healthz")).status == 405
    found = await scrape(client)
    labels = {
        (dict(ls)["route"], dict(ls)["method"])
        for name, ls in found
        if name == "otpd_http_requests_total" and dict(ls)["status"] == "405"
    }
    assert labels == {(UNMATCHED_ROUTE, "DELETE"), (UNMATCHED_ROUTE, "OTHER")}


def test_labelled_children_are_made_once_per_label_set() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_request("/healthz", "GET", 200, 0.001)
    metrics.observe_request("/healthz", "GET", 503, 0.001)
    found = samples(metrics.render().decode())
    assert (
        value(found, "otpd_http_requests_total", route="/healthz", method="GET", status="200") == 3
    )
    assert (
        value(found, "otpd_http_request_duration_seconds_count", route="/healthz", method="GET")
        == 4
    )
    seconds, counts = metrics._http[("/healthz", "GET")]
    metrics.observe_request("/healthz", "GET", 200, 0.001)
    assert metrics._http[("/healthz", "GET")][0] is seconds
    assert set(counts) == {200, 503}


async def test_an_idle_daemon_reports_an_empty_queue_and_every_family(serve: Any) -> None:
    _, client = await serve(sms={"daily_budget": 2.5})
    found = await scrape(client)
    assert value(found, "otpd_queue_backlog") == 0
    assert value(found, "otpd_queue_oldest_age_seconds") == 0
    assert value(found, "otpd_queue_depth") == 0
    assert value(found, "otpd_sms_daily_budget") == 2.5
    assert value(found, "otpd_store_up") == 1
    assert value(found, "otpd_store_degraded") == 0


def _job(task_id: str, now: float) -> Job:
    record = TaskRecord(task_id, Channel.EMAIL, TaskStatus.QUEUED, "t", now, now)
    return Job(record, Message(channel=Channel.EMAIL, to="a@example.com", text="x"))


async def test_the_in_process_queue_reports_its_backlog_and_oldest_task(
    clock: FakeClock,
) -> None:
    async with (
        MemoryStore(clock=clock) as store,
        InProcessQueue(store, DispatchConfig(), clock) as queue,
    ):
        assert await queue.backlog() == (0, 0.0)
        await queue.put(_job("a", clock.time()))
        clock.advance(5)
        await queue.put(_job("b", clock.time()))
        clock.advance(2)
        assert await queue.backlog() == (2, 7.0)
        first = await queue.get()  # with a worker it still counts as the oldest
        assert await queue.backlog() == (2, 7.0)
        await queue.done(first)
        assert await queue.backlog() == (1, 2.0)
        second = await queue.get()
        await queue.retry(second, 60)  # waiting for its retry: counted, but not aging
        assert await queue.backlog() == (1, 0.0)


@pytest.mark.parametrize("mode", ["standalone", "cluster"])
async def test_the_durable_queue_ages_its_oldest_entry_by_the_redis_clock(
    mode: str, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    store_config: dict[str, Any] = {"backend": "redis", "key_prefix": key_prefix, "mode": mode}
    if mode == "cluster":
        store_config["redis_url"] = request.getfixturevalue("redis_cluster_env").seed_url
    else:
        store_config["redis_url"] = request.getfixturevalue("redis_url")
    config = load_config(data={"store": store_config}, env={})
    async with RedisStore(config.store) as store:
        streams = TaskStreams(store)
        assert await streams.oldest_age() == 0.0
        now: Any = await store.redis.time()  # a cluster answers per node
        seconds, micros = next(iter(now.values())) if isinstance(now, dict) else now
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        await store.redis.xadd(store.layout.ready(3), {"t": "old"}, id=f"{now_ms - 5000}-0")
        await store.redis.xadd(store.layout.ready(5), {"t": "new"}, id=f"{now_ms - 1000}-0")
        age = await streams.oldest_age()
        assert 5.0 <= age < 7.0
        assert await streams.backlog() == 2


async def test_a_dead_letter_is_counted_per_channel(serve: Any) -> None:
    sink = await SmtpSink.start()
    try:
        sink.handler.rcpt_reply = "550 5.1.1 no such user"
        daemon, client = await serve(
            email={"providers": ["smtp"]},
            smtp={"host": "127.0.0.1", "port": sink.port, "tls": "none"},
        )
        body = {"channel": "email", "to": "poison@example.com", "subject": "s", "text": "t"}
        assert (await client.post("/v1/messages", json=body)).status == 202
        await daemon.dispatcher.wait_idle()
        found = await scrape(client)
    finally:
        await sink.aclose()
    assert value(found, "otpd_dead_letters_total", channel="email") == 1
    permanent = {"channel": "email", "provider": "smtp", "outcome": "permanent"}
    assert value(found, "otpd_delivery_attempts_total", **permanent) == 1


async def test_a_failing_sampler_leaves_the_scrape_answering() -> None:
    metrics = Metrics()

    async def broken() -> None:
        raise ConnectionError("store down")

    async def fine() -> None:
        metrics.queue_backlog.set(3)

    metrics.add_sampler(broken)
    metrics.add_sampler(fine)
    started = time.perf_counter()
    found = samples((await metrics.scrape()).decode())
    assert time.perf_counter() - started < 1
    assert value(found, "otpd_queue_backlog") == 3
    metrics.remove_sampler(fine)
    metrics.queue_backlog.set(0)
    assert value(samples((await metrics.scrape()).decode()), "otpd_queue_backlog") == 0
