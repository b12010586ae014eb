"""Prometheus metrics, one registry per daemon so embedders and tests never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
