"""Where one code went: the deliveries of an OTP issued with a channel fallback.

A code requested with ``fallback`` keeps a trail: its deliveries (the first channel's task,
then the fallback's), whether it was verified, and until the fallback is taken the fallback
message itself, sealed (it holds the code). The first channel's task failing within
``fallback_until`` takes the sealed message exactly once (:meth:`Store.take_fallback`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["OtpTrail", "TrailDelivery", "dump_deliveries", "load_deliveries"]


@dataclass(frozen=True, slots=True)
class TrailDelivery:
    """One task that carries the code; ``fallback`` marks the one sent after the first
    channel failed."""

    channel: str
    task_id: str
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class OtpTrail:
    """The stored trail of one code (never the code: the fallback message is kept apart,
    sealed, and read only by :meth:`Store.take_fallback`)."""

    otp_id: str
    created_at: float
    expires_at: float
    fallback_channel: str
    fallback_until: float
    """The first channel's task failing after this no longer sends the fallback."""
    deliveries: tuple[TrailDelivery, ...]
    verified_at: float = 0.0
    fell_back_at: float = 0.0


def dump_deliveries(deliveries: tuple[TrailDelivery, ...]) -> str:
    return json.dumps([[d.channel, d.task_id, d.fallback] for d in deliveries])


def load_deliveries(raw: str) -> tuple[TrailDelivery, ...]:
    return tuple(TrailDelivery(str(c), str(t), bool(f)) for c, t, f in json.loads(raw))
