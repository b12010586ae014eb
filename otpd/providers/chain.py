"""Failover over an ordered list of providers, each behind its own circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import structlog

from otpd.clock import Clock
from otpd.config import BreakerConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.metrics import Metrics
from otpd.models import Channel, Message, ProviderHealth, SendResult
from otpd.providers.base import Provider
from otpd.providers.breaker import CircuitBreaker, CircuitState

__all__ = ["ProviderChain"]

log = structlog.get_logger("otpd.chain")

_STATE_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class ProviderChain:
    """Sends through the first provider whose circuit allows it, failing over on transient
    errors within the same attempt. A permanent error (the message or its recipient is
    refused) stops the chain. Only failures that blame the provider (network, timeout,
    5xx, throttling, auth) count against its circuit: one bad message never opens it."""

    def __init__(
        self,
        channel: Channel,
        providers: Sequence[Provider],
        *,
        breaker: BreakerConfig,
        clock: Clock,
        metrics: Metrics,
        attempt_timeout: float | None = None,
    ) -> None:
        if not providers:
            raise ValueError(f"the {channel} chain needs at least one provider")
        self.channel = channel
        self.providers = tuple(providers)
        self._metrics = metrics
        # a hard bound on each provider call, whatever the provider's own timeouts: the
        # durable queue's claim_idle_seconds is checked against it
        self.attempt_timeout = attempt_timeout
        self.breakers = {
            p.name: CircuitBreaker(breaker, clock, self._state_logger(p.name)) for p in providers
        }
        for p in providers:
            metrics.breaker_state.labels(channel.value, p.name).set(0)
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("the chain is already open")
        async with AsyncExitStack() as stack:
            for provider in self.providers:
                await stack.enter_async_context(provider)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.providers]

    async def send(self, message: Message) -> SendResult:
        failures: list[str] = []
        for provider in self.providers:
            breaker = self.breakers[provider.name]
            if not breaker.allow():
                failures.append(f"{provider.name}: circuit open")
                continue
            started = time.perf_counter()
            labels = (self.channel.value, provider.name)
            try:
                async with asyncio.timeout(self.attempt_timeout):
                    result = await provider.send(message)
            except TimeoutError:
                breaker.record_failure("timeout: no answer within the attempt timeout")
                self._metrics.deliveries.labels(*labels, "transient").inc()
                failures.append(f"{provider.name}: timeout")
                log.warning(
                    "delivery.failover",
                    channel=self.channel.value,
                    provider=provider.name,
                    reason="timeout",
                    error="no answer within dispatch.provider_timeout_seconds",
                )
                continue
            except PermanentDeliveryError:
                # the provider did its job; the recipient is refused
                breaker.record_success()
                self._metrics.deliveries.labels(*labels, "permanent").inc()
                raise
            except DeliveryError as exc:
                if exc.blames_provider:
                    breaker.record_failure(f"{exc.reason}: {exc.message}")
                self._metrics.deliveries.labels(*labels, "transient").inc()
                failures.append(f"{provider.name}: {exc.reason}")
                log.warning(
                    "delivery.failover",
                    channel=self.channel.value,
                    provider=provider.name,
                    reason=exc.reason,
                    error=exc.message,
                )
                continue
            breaker.record_success()
            self._metrics.deliveries.labels(*labels, "sent").inc()
            self._metrics.delivery_seconds.labels(*labels).observe(time.perf_counter() - started)
            return result
        every_circuit_open = all(f.endswith("circuit open") for f in failures)
        raise TransientDeliveryError(
            "; ".join(failures),
            reason="no_provider_available" if every_circuit_open else "all_providers_failed",
        )

    async def health(self) -> list[ProviderHealth]:
        out = []
        for provider in self.providers:
            breaker = self.breakers[provider.name]
            breaker.allow()  # let an expired open circuit show as half-open
            out.append(
                ProviderHealth(
                    name=provider.name,
                    channel=self.channel,
                    state=breaker.state.value,
                    consecutive_failures=breaker.consecutive_failures,
                    last_error=breaker.last_error,
                    last_success_at=breaker.last_success_at,
                    details=await provider.health(),
                )
            )
        return out

    def _state_logger(self, name: str) -> Callable[[CircuitState, CircuitState], None]:
        def changed(old: CircuitState, new: CircuitState) -> None:
            self._metrics.breaker_state.labels(self.channel.value, name).set(_STATE_VALUE[new])
            self._metrics.breaker_transitions.labels(self.channel.value, name, new.value).inc()
            log.warning(
                "breaker.state_changed",
                channel=self.channel.value,
                provider=name,
                old=old.value,
                new=new.value,
            )

        return changed
