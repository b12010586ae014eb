"""The one boundary where redis-py errors become otpd's: every family maps to
:class:`~otpd.errors.UnavailableError` (503 ``unavailable``), counted and logged once per
change of state, so a Redis outage never reaches a client as a 500 nor floods the log."""

from __future__ import annotations

import os
import time

import structlog
from redis import exceptions as redis_errors

from otpd.metrics import Metrics
from otpd.redaction import masked_url

__all__ = ["StoreHealth", "UnreplicatedWrite", "error_kind", "failure_reason", "masked_url"]

log = structlog.get_logger("otpd.store")


class UnreplicatedWrite(Exception):
    """The primary applied a write but fewer replicas than ``store.replica_acks``
    acknowledged it in time (``WAIT``): a failover now could lose it, so it is not
    confirmed to the client (503) rather than answered and then forgotten."""


# Most specific first: ReadOnlyError and OutOfMemoryError are ResponseErrors, MovedError
# is an AskError, BusyLoadingError and MaxConnectionsError are ConnectionErrors.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (UnreplicatedWrite, "unreplicated"),
    (redis_errors.ReadOnlyError, "readonly"),
    (redis_errors.OutOfMemoryError, "oom"),
    (redis_errors.BusyLoadingError, "loading"),
    (redis_errors.TryAgainError, "tryagain"),
    (redis_errors.ClusterDownError, "clusterdown"),
    (redis_errors.AskError, "moved"),
    (redis_errors.ClusterError, "cluster"),
    (redis_errors.RedisClusterException, "cluster"),
    (redis_errors.AuthenticationError, "auth"),
    (redis_errors.AuthorizationError, "auth"),
    (redis_errors.NoPermissionError, "auth"),
    (redis_errors.MaxConnectionsError, "pool_exhausted"),
    (redis_errors.TimeoutError, "timeout"),
    (TimeoutError, "timeout"),
    (redis_errors.ConnectionError, "connection"),
    (OSError, "connection"),
    (redis_errors.ResponseError, "response"),
    (redis_errors.RedisError, "redis"),
)


def error_kind(exc: BaseException) -> str | None:
    """A short stable name for a store failure, or ``None`` when ``exc`` is not one."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, Exception) and _raised_in_redis_py(exc):
        return "redis"
    return None


def _raised_in_redis_py(exc: BaseException) -> bool:
    """Whether ``exc`` came out of redis-py's own code: not one of its errors but one of its
    bugs, which a topology change triggers (mid-failover, a cluster connection closed by
    another task raises ``AttributeError: 'NoneType' object has no attribute
    'writelines'``; see also redis/redis-py#3546 and #3835)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("redis."):
            return True
        tb = tb.tb_next
    return False


def failure_reason(exc: BaseException) -> str:
    """What went wrong underneath a store error, in a few words (``Connection refused``,
    ``Name or service not known``, ``Timeout connecting to server``)."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain may loop back on itself
        if seen is None:
            break
        if isinstance(seen, OSError) and isinstance(seen.errno, int):
            if seen.errno > 0:
                return os.strerror(seen.errno)
            if seen.strerror:
                return seen.strerror  # a resolver error (socket.gaierror)
        seen = seen.__cause__ or seen.__context__
    return str(exc).rstrip(".") or type(exc).__name__


class StoreHealth:
    """Counts every failure in ``otpd_store_errors_total{op,kind}`` and logs a warning when
    the store starts failing (or fails differently), and once when it answers again after
    ``quiet_seconds`` without a failure (a store that fails every other call, as a full
    Redis does, is still failing). ``otpd_store_up`` follows the same two moments: 0 from
    the first failure, 1 again when the recovery is logged."""

    def __init__(self, metrics: Metrics, *, quiet_seconds: float = 1.0) -> None:
        self._metrics = metrics
        self._quiet = quiet_seconds
        self.failing: str | None = None
        self._last_failure = 0.0

    def failed(self, op: str, kind: str, exc: BaseException) -> None:
        self._metrics.store_errors.labels(op, kind).inc()
        self._last_failure = time.monotonic()
        if self.failing != kind:
            self.failing = kind
            self._metrics.store_up.set(0)
            log.warning("store.unavailable", operation=op, kind=kind, error=type(exc).__name__)

    def answered(self) -> None:
        if self.failing is not None and time.monotonic() - self._last_failure >= self._quiet:
            log.warning("store.recovered", after=self.failing)
            self.failing = None
            self._metrics.store_up.set(1)
