"""Prometheus metrics, one registry per daemon so embedders and tests never collide.

Counters are declared without their ``_total`` suffix (prometheus_client adds it), so
``otpd_tasks`` is exposed as ``otpd_tasks_total``. Gauges that need a store round trip
(queue backlog, oldest task) are sampled when ``/metrics`` is scraped, by the samplers
the owning objects register with :meth:`Metrics.add_sampler`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from otpd.errors import OtpdError

__all__ = ["UNMATCHED_ROUTE", "Metrics", "Sampler"]

log = structlog.get_logger("otpd.metrics")

Sampler = Callable[[], Awaitable[None]]

UNMATCHED_ROUTE = "unmatched"
"""The route label of every request that matched no route: one series, whatever the path."""

# a scrape must answer even while the store hangs: each sampler gets at most this long
SAMPLE_TIMEOUT_SECONDS = 2.0

_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.otp_issued = Counter("otpd_otp_issued", "OTP codes issued", ["channel"], registry=r)
        self.otp_verified = Counter(
            "otpd_otp_verifications", "OTP verifications by result", ["result"], registry=r
        )
        self.link_tokens_issued = Counter(
            "otpd_link_tokens_issued", "Link tokens issued", ["purpose"], registry=r
        )
        self.link_tokens_used = Counter(
            "otpd_link_tokens_used",
            "Link token checks and confirmations by result",
            ["purpose", "action", "result"],
            registry=r,
        )
        self.rate_limited = Counter(
            "otpd_rate_limited", "Requests refused by a rate limit", ["scope"], registry=r
        )
        self.tasks = Counter(
            "otpd_tasks", "Delivery tasks by final status", ["channel", "status"], registry=r
        )
        self.deliveries = Counter(
            "otpd_delivery_attempts",
            "Provider send attempts by outcome",
            ["channel", "provider", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "otpd_delivery_seconds",
            "Time one provider took to accept a message",
            ["channel", "provider"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.queue_depth = Gauge("otpd_queue_depth", "Tasks waiting for a worker", registry=r)
        self.breaker_state = Gauge(
            "otpd_breaker_state",
            "Circuit state per provider (0 closed, 1 half-open, 2 open)",
            ["channel", "provider"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "otpd_breaker_transitions",
            "Circuit state changes",
            ["channel", "provider", "to"],
            registry=r,
        )
        self.sms_blocked = Counter(
            "otpd_sms_blocked", "SMS refused by the fraud and cost guard", ["reason"], registry=r
        )
        self.store_errors = Counter(
            "otpd_store_errors",
            "Store operations that failed, by operation and kind of failure",
            ["op", "kind"],
            registry=r,
        )
        self.store_up = Gauge(
            "otpd_store_up",
            "1 while the store answers, 0 from its first failed call until it answers again",
            registry=r,
        )
        self.store_up.set(1)  # a store is up until a call to it fails
        self.store_degraded = Gauge(
            "otpd_store_degraded",
            "1 while the store serves from its process-local fallback (store.fallback), else 0",
            registry=r,
        )
        self.sms_spend = Gauge("otpd_sms_spend_today", "Estimated SMS spend today", registry=r)
        self.sms_budget = Gauge(
            "otpd_sms_daily_budget", "sms.daily_budget (0: no budget)", registry=r
        )
        self.http_requests = Counter(
            "otpd_http_requests",
            "HTTP requests answered, by route pattern, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "otpd_http_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern and method",
            ["route", "method"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.queue_backlog = Gauge(
            "otpd_queue_backlog",
            "Tasks queued, with a worker or waiting for a retry (durable queue: of every "
            "daemon sharing it), sampled at scrape time",
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "otpd_queue_oldest_age_seconds",
            "Age of the oldest task queued or with a worker (0 when none), sampled at scrape time",
            registry=r,
        )
        self.dead_letters = Counter(
            "otpd_dead_letters",
            "Tasks that failed for good and were kept as dead letters",
            ["channel"],
            registry=r,
        )
        self.otp_fallbacks = Counter(
            "otpd_otp_fallbacks",
            "Codes sent on their fallback channel after the first one failed, by the "
            "fallback's channel and whether it was queued (sent) or refused",
            ["channel", "result"],
            registry=r,
        )
        self.delivery_reports = Counter(
            "otpd_delivery_reports",
            "Provider reports (webhooks) by provider and what applying them did "
            "(applied, duplicate, stale, other_message, gone, parked)",
            ["provider", "outcome"],
            registry=r,
        )
        self._http: dict[tuple[str, str], tuple[Histogram, dict[int, Counter]]] = {}
        self._samplers: list[Sampler] = []

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request; the labelled children are made once per label set
        (``route`` must be a route pattern or :data:`UNMATCHED_ROUTE`, never a raw path)."""
        children = self._http.get((route, method))
        if children is None:
            children = (self.http_seconds.labels(route, method), {})
            self._http[(route, method)] = children
        seconds_child, counts = children
        seconds_child.observe(seconds)
        count = counts.get(status)
        if count is None:
            count = counts[status] = self.http_requests.labels(route, method, str(status))
        count.inc()

    def add_sampler(self, sampler: Sampler) -> None:
        """Run ``sampler`` before every scrape: it sets gauges, within a bounded time."""
        self._samplers.append(sampler)

    def remove_sampler(self, sampler: Sampler) -> None:
        if sampler in self._samplers:
            self._samplers.remove(sampler)

    async def scrape(self) -> bytes:
        """Run the samplers (each bounded; a failing one leaves its gauges as they were),
        then render."""
        for sampler in list(self._samplers):
            try:
                async with asyncio.timeout(SAMPLE_TIMEOUT_SECONDS):
                    await sampler()
            except (OtpdError, TimeoutError) as exc:  # the store is down: it says so itself
                log.debug("metrics.sample_failed", sampler=_name(sampler), error=repr(exc))
            except Exception as exc:  # a scrape answers whatever one sampler does
                log.warning("metrics.sample_failed", sampler=_name(sampler), error=repr(exc))
        return self.render()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _name(sampler: Sampler) -> str:
    return str(getattr(sampler, "__qualname__", sampler))
