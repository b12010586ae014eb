"""Sliding-window hits for the memory store: the counterpart of a Redis sorted set."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from operator import itemgetter

__all__ = ["Window", "ms"]

# A window finds members by a scan while it holds this many hits at most, and by a dict
# once it holds more: most windows (one per user and action) hold a few hits, and a dict
# for each would cost more memory than all their hits.
_SCAN_UP_TO = 8

_hit_time = itemgetter(0)


def ms(seconds: float) -> int:
    """Milliseconds, rounded the way the Redis store sends times to its scripts."""
    return round(seconds * 1000)


class Window:
    """The hits of one limit key, like its Redis sorted set: ``(time_ms, member)`` in
    ascending order from ``_head`` on (the hits before it have left the window), and,
    once there are more than a few, each member's time."""

    __slots__ = ("_head", "_hits", "_times")

    def __init__(self) -> None:
        self._hits: list[tuple[int, str]] = []
        self._head = 0
        self._times: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._hits) - self._head

    def __repr__(self) -> str:
        return f"_Window({len(self)} hits)"

    def drop_until(self, cutoff: int) -> None:
        """Drop the hits at or before ``cutoff`` (``ZREMRANGEBYSCORE key -inf cutoff``)."""
        hits, head = self._hits, self._head
        if head == len(hits) or hits[head][0] > cutoff:
            return
        end = bisect_right(hits, cutoff, head, key=_hit_time)
        if self._times is not None:
            for i in range(head, end):
                del self._times[hits[i][1]]
        # moving the head is O(1); the dead prefix goes once it is half the list, so each
        # hit is moved at most once more on average
        if 2 * end >= len(hits):
            del hits[:end]
            end = 0
        self._head = end

    def time_of(self, member: str) -> int | None:
        if self._times is not None:
            return self._times.get(member)
        hits = self._hits
        for i in range(self._head, len(hits)):
            if hits[i][1] == member:
                return hits[i][0]
        return None

    def time_at(self, rank: int) -> int:
        """The time of the hit with ``rank`` older hits (``ZRANGE key rank rank``)."""
        return self._hits[self._head + rank][0]

    def newest(self) -> int:
        return self._hits[-1][0]

    def add(self, member: str, at: int) -> None:
        """Record ``member`` at ``at``; a member already there moves to ``at`` (``ZADD``)."""
        hits = self._hits
        before = self.time_of(member)
        if before == at:
            return
        if before is not None:
            del hits[bisect_left(hits, (before, member), self._head)]
        hit = (at, member)
        # times only go back when a clock is stepped: appending is the usual case
        if len(hits) == self._head or hits[-1] < hit:
            hits.append(hit)
        else:
            insort(hits, hit, self._head)
        if self._times is not None:
            self._times[member] = at
        elif len(hits) - self._head > _SCAN_UP_TO:
            self._times = {m: t for t, m in hits[self._head :]}
