"""Exponential backoff with jitter for failed delivery attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``delay(n)`` for the n-th failed attempt: half of ``base * 2**(n-1)`` (capped at
    ``cap``) fixed, the other half random, so retries spread out but never shrink to 0."""

    max_attempts: int
    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def should_retry(self, attempts: int) -> bool:
        return attempts < self.max_attempts

    def delay(self, attempts: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, attempts - 1))
        return float(ceiling / 2 + self.rng.uniform(0, ceiling / 2))
