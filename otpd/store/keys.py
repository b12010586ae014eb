"""The key layout of the built-in backends: every key name is built here.

Keys carry a hash tag (``{u:<user>}``) naming whose data they hold; on one Redis node
that is only a naming convention. Addresses never appear in keys: callers pass a keyed
hash of them.
"""

from __future__ import annotations

import zlib

from otpd.store.base import Bucket

__all__ = ["KeyLayout"]


class KeyLayout:
    """``partitions`` is the number of delivery queue partitions: a task record shares
    the hash tag of its partition (``{q:<n>}``), so a script can change both at once."""

    def __init__(self, prefix: str, partitions: int = 16) -> None:
        self.prefix = prefix
        self.partitions = partitions

    def otp(self, user_id: str, purpose: str) -> str:
        return f"{self.prefix}otp:{{u:{user_id}}}:{purpose}"

    def limit(self, bucket: Bucket, window: int) -> str:
        action = f":{bucket.action}" if bucket.action else ""
        return f"{self.prefix}rl:{{{bucket.kind.value}:{bucket.subject}}}{action}:{window}"

    def partition(self, task_id: str) -> int:
        return zlib.crc32(task_id.encode()) % self.partitions

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{{q:{self.partition(task_id)}}}:{task_id}"

    def ready(self, partition: int) -> str:
        """The stream of tasks ready for a worker (one consumer group reads it)."""
        return f"{self.prefix}q:{{q:{partition}}}:ready"

    def delayed(self, partition: int) -> str:
        """Task ids waiting for a retry, scored by when they are due (ms)."""
        return f"{self.prefix}q:{{q:{partition}}}:delayed"

    def dead(self, partition: int) -> str:
        """The dead-letter stream of the partition."""
        return f"{self.prefix}q:{{q:{partition}}}:dead"

    def remembered(self, scope: str, ref: str) -> str:
        return f"{self.prefix}idem:{{i:{scope}:{ref}}}"

    def token(self, owner_ref: str, purpose: str) -> str:
        """The one live link token of an owner; ``owner_ref`` is a keyed hash of
        (purpose, user id), so a new token for the same owner overwrites the old one."""
        return f"{self.prefix}tok:{{o:{owner_ref}}}:{purpose}"

    def message(self, ref: str) -> str:
        """Which task a provider's message id is (``ref``: a keyed hash of provider and
        id), and the reports that arrived before the link."""
        return f"{self.prefix}pm:{{m:{ref}}}"

    def trail(self, otp_id: str) -> str:
        """Where a code issued with a fallback went (:mod:`otpd.store.trails`)."""
        return f"{self.prefix}otpt:{{o:{otp_id}}}"

    def suppression(self, address_hash: str) -> str:
        """A suppressed recipient (``address_hash``: a keyed hash of its address)."""
        return f"{self.prefix}supp:{{s:{address_hash}}}"

    # SMS conversion: every key shares one hash tag, so that counting a range, blocking it
    # and indexing the block is one atomic script. One slot carries little: at most one
    # call per SMS code, which the SMS caps bound.

    def sms_samples(self, range_hash: str) -> str:
        """SMS codes sent to and verified by a number range, per time bucket."""
        return f"{self.prefix}conv:{{sms}}:{range_hash}"

    def sms_block(self, range_hash: str) -> str:
        """A blocked number range (its prefix sealed), until the block expires."""
        return f"{self.prefix}smsblk:{{sms}}:{range_hash}"

    def sms_blocks(self) -> str:
        """The blocked ranges, scored by when their block expires."""
        return f"{self.prefix}smsblk:{{sms}}:index"

    def counter(self, name: str) -> str:
        return f"{self.prefix}ctr:{{c:{name}}}"

    def audit_user(self, user_id: str) -> str:
        """The audit stream of a user: the user's hash tag, like the user's codes."""
        return f"{self.prefix}audit:{{u:{user_id}}}"

    def audit_global(self) -> str:
        """The capped audit stream of events that name no user."""
        return f"{self.prefix}audit:{{g:audit}}"

    def totp(self, user_id: str) -> str:
        """A user's enabled TOTP secret (sealed), last step and recovery code hashes: the
        user's hash tag, like the user's failure window."""
        return f"{self.prefix}totp:{{u:{user_id}}}"

    def totp_pending(self, user_id: str) -> str:
        """A user's pending TOTP enrolment, until it is confirmed or expires."""
        return f"{self.prefix}totp:{{u:{user_id}}}:pending"
