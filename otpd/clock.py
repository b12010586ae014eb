"""Time sources, injectable so tests drive time instead of sleeping."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "rfc3339"]


class Clock(Protocol):
    """Wall time for records and windows, monotonic time for breakers and timeouts."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds


_last_second: tuple[int | None, str] = (None, "")


def rfc3339(ts: float) -> str:
    """Format a UNIX timestamp as RFC 3339 in UTC with second precision."""
    global _last_second
    second = math.floor(ts)
    cached, text = _last_second
    if second != cached:
        # one formatting per second: every audit record and task answer asks for "now"
        text = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6] + "Z"
        _last_second = (second, text)
    return text
