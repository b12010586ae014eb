"""Every store key name is built here.

Keys that one script touches together share a Redis Cluster hash tag (``{u:<user>}``), so
the same scripts run on a cluster. Addresses never appear in keys: callers pass a keyed
hash of them (``addr``).
"""

from __future__ import annotations

__all__ = ["Keys"]


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def otp(self, user_id: str, purpose: str) -> str:
        return f"{self.prefix}otp:{{u:{user_id}}}:{purpose}"

    def user_limit(self, user_id: str, action: str, window: int) -> str:
        return f"{self.prefix}rl:{{u:{user_id}}}:{action}:{window}"

    def ip_limit(self, client_ip: str, action: str, window: int) -> str:
        return f"{self.prefix}rl:{{ip:{client_ip}}}:{action}:{window}"

    def address_limit(self, addr: str, action: str, window: int) -> str:
        return f"{self.prefix}rl:{{a:{addr}}}:{action}:{window}"

    def global_limit(self, name: str, window: int) -> str:
        return f"{self.prefix}rl:{{g:{name}}}:{window}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{{t:{task_id}}}"

    def idempotency(self, scope: str, key: str) -> str:
        return f"{self.prefix}idem:{{i:{scope}:{key}}}"

    def token(self, owner_ref: str, purpose: str) -> str:
        """The one live link token of an owner; ``owner_ref`` is a keyed hash of
        (purpose, user id), so a new token for the same owner overwrites the old one."""
        return f"{self.prefix}tok:{{o:{owner_ref}}}:{purpose}"

    def counter(self, name: str) -> str:
        return f"{self.prefix}ctr:{{c:{name}}}"

    def distinct(self, name: str) -> str:
        return f"{self.prefix}set:{{s:{name}}}"
