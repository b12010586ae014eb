"""Store backends by config name: ``store.backend`` picks one, and a new backend is one
class implementing :class:`~otpd.store.base.Store` plus one :func:`register_backend` line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from otpd.clock import Clock
from otpd.config import StoreConfig
from otpd.metrics import Metrics
from otpd.store.base import Store

__all__ = ["StoreDeps", "StoreFactory", "backends", "create_store", "register_backend"]


@dataclass(frozen=True, slots=True)
class StoreDeps:
    """What a backend may use besides its config section."""

    clock: Clock
    metrics: Metrics
    partitions: int = 16  # dispatch.partitions: how task keys are grouped


StoreFactory = Callable[[StoreConfig, StoreDeps], Store]


def _memory(config: StoreConfig, deps: StoreDeps) -> Store:
    from otpd.store.memory import MemoryStore

    return MemoryStore(key_prefix=config.key_prefix, clock=deps.clock)


def _redis(config: StoreConfig, deps: StoreDeps) -> Store:
    # imported here so the dev daemon never loads redis-py
    from otpd.store.redis import RedisStore

    return RedisStore(config, metrics=deps.metrics, partitions=deps.partitions)


_BACKENDS: dict[str, StoreFactory] = {"memory": _memory, "redis": _redis}


def register_backend(name: str, factory: StoreFactory) -> None:
    """Make ``name`` a backend that :func:`create_store` can build."""
    _BACKENDS[name] = factory


def backends() -> list[str]:
    return sorted(_BACKENDS)


def create_store(name: str, config: StoreConfig, deps: StoreDeps) -> Store:
    """A new, unopened store of backend ``name`` (``async with`` it to connect); with
    ``store.fallback = "memory"``, wrapped in a
    :class:`~otpd.store.fallback.FallbackStore` that serves while it is unreachable."""
    try:
        factory = _BACKENDS[name]
    except KeyError:
        raise LookupError(f"no store backend {name!r} (known: {backends()})") from None
    store = factory(config, deps)
    if config.fallback == "memory" and name != "memory":
        from otpd.store.fallback import FallbackStore
        from otpd.store.memory import MemoryStore

        local = MemoryStore(key_prefix=config.key_prefix, clock=deps.clock)
        return FallbackStore(store, local, clock=deps.clock, metrics=deps.metrics)
    return store
