"""Circuit breaker: stop calling a provider that keeps failing, probe it again later."""

from __future__ import annotations

import enum
from collections.abc import Callable

from otpd.clock import Clock
from otpd.config import BreakerConfig
from otpd.redaction import redact_text

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures, half-opens after
    ``recovery_seconds`` and closes again after ``success_threshold`` successes in a row."""

    def __init__(
        self,
        config: BreakerConfig,
        clock: Clock,
        on_change: Callable[[CircuitState, CircuitState], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_change = on_change
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._half_open_successes = 0
        self._opened_at = 0.0
        self.last_error: str | None = None
        self.last_success_at: float | None = None

    def allow(self) -> bool:
        """Whether a call may go through now (moves open -> half-open when it is time)."""
        if self.state is CircuitState.OPEN:
            if self._clock.monotonic() - self._opened_at < self.config.recovery_seconds:
                return False
            self._transition(CircuitState.HALF_OPEN)
        return True

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.last_success_at = self._clock.time()
        if self.state is CircuitState.HALF_OPEN:
            self._half_open_successes += 1
            if self._half_open_successes >= self.config.success_threshold:
                self._transition(CircuitState.CLOSED)

    def record_failure(self, error: str) -> None:
        self.consecutive_failures += 1
        self.last_error = redact_text(error)
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED
            and self.consecutive_failures >= self.config.failure_threshold
        ):
            self._opened_at = self._clock.monotonic()
            self._transition(CircuitState.OPEN)

    def _transition(self, new: CircuitState) -> None:
        old, self.state = self.state, new
        self._half_open_successes = 0
        if self._on_change is not None and old is not new:
            self._on_change(old, new)
