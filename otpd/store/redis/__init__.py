"""The ``redis`` backend: one Lua script per operation, one round trip each."""

from otpd.store.redis.errors import StoreHealth, error_kind
from otpd.store.redis.store import RedisStore, load_script

__all__ = ["RedisStore", "StoreHealth", "error_kind", "load_script"]
