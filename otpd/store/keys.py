"""The key layout of the built-in backends: every key name is built here.

Keys carry a hash tag (``{u:<user>}``) naming whose data they hold; on one Redis node
that is only a naming convention. Addresses never appear in keys: callers pass a keyed
hash of them.
"""

from __future__ import annotations

from otpd.store.base import Bucket

__all__ = ["KeyLayout"]


class KeyLayout:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def otp(self, user_id: str, purpose: str) -> str:
        return f"{self.prefix}otp:{{u:{user_id}}}:{purpose}"

    def limit(self, bucket: Bucket, window: int) -> str:
        action = f":{bucket.action}" if bucket.action else ""
        return f"{self.prefix}rl:{{{bucket.kind.value}:{bucket.subject}}}{action}:{window}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{{t:{task_id}}}"

    def remembered(self, scope: str, ref: str) -> str:
        return f"{self.prefix}idem:{{i:{scope}:{ref}}}"

    def token(self, owner_ref: str, purpose: str) -> str:
        """The one live link token of an owner; ``owner_ref`` is a keyed hash of
        (purpose, user id), so a new token for the same owner overwrites the old one."""
        return f"{self.prefix}tok:{{o:{owner_ref}}}:{purpose}"

    def counter(self, name: str) -> str:
        return f"{self.prefix}ctr:{{c:{name}}}"
