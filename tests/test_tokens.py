"""Link tokens: the store operations on both stores, and the token service without HTTP."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import structlog

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.errors import InvalidTokenError, RateLimitedError
from otpd.models import Message
from otpd.services.tokens import TokenService
from otpd.store.base import Limit, Store, TokenCheck, TokenRecord

VERIFY = "email_verification"
RESET = "password_reset"


def record(now: float, token_hash: str = "h" * 64, ttl: float = 3600, **kw: Any) -> TokenRecord:
    fields: dict[str, Any] = {
        "token_id": f"tok_{now}",
        "token_hash": token_hash,
        "purpose": RESET,
        "user_id": "u1",
        "email": "ada@example.com",
        "created_at": now,
        "expires_at": now + ttl,
        "client_ip": "203.0.113.9",
        "user_agent": "pytest",
    }
    fields.update(kw)
    return TokenRecord(**fields)


# ---------------------------------------------------------------- store, both backends


async def test_store_checks_without_consuming_and_confirm_consumes_once(
    store: Store, clock: FakeClock
) -> None:
    key = store.keys.token("ref1", RESET)
    now = clock.time()
    assert await store.issue_token(key, record(now), [], now) is None
    for _ in range(2):
        checked = await store.use_token(key, "h" * 64, RESET, now, consume=False)
        assert checked.check is TokenCheck.OK
        assert checked.record == record(now)
    used = await store.use_token(key, "h" * 64, RESET, now, consume=True)
    assert used.check is TokenCheck.OK
    assert used.record is not None
    assert (used.record.user_id, used.record.email) == ("u1", "ada@example.com")
    again = await store.use_token(key, "h" * 64, RESET, now, consume=True)
    assert again == type(again)(TokenCheck.UNKNOWN)


async def test_store_refuses_a_wrong_hash_or_purpose_without_consuming(
    store: Store, clock: FakeClock
) -> None:
    key = store.keys.token("ref1", RESET)
    now = clock.time()
    await store.issue_token(key, record(now), [], now)
    wrong = await store.use_token(key, "x" * 64, RESET, now, consume=True)
    assert (wrong.check, wrong.record, wrong.user_id) == (TokenCheck.MISMATCH, None, "u1")
    other = await store.use_token(key, "h" * 64, VERIFY, now, consume=True)
    assert other.check is TokenCheck.MISMATCH
    assert (await store.use_token(key, "h" * 64, RESET, now, consume=True)).check is TokenCheck.OK


async def test_store_treats_a_token_at_its_expiry_as_expired_and_drops_it(
    store: Store, clock: FakeClock
) -> None:
    key = store.keys.token("ref1", RESET)
    now = clock.time()
    await store.issue_token(key, record(now, ttl=60), [], now)
    clock.advance(59.5)
    assert (await store.use_token(key, "h" * 64, RESET, clock.time(), consume=False)).check is (
        TokenCheck.OK
    )
    clock.advance(0.5)
    expired = await store.use_token(key, "h" * 64, RESET, clock.time(), consume=True)
    assert (expired.check, expired.user_id) == (TokenCheck.EXPIRED, "u1")
    gone = await store.use_token(key, "h" * 64, RESET, clock.time(), consume=True)
    assert gone.check is TokenCheck.UNKNOWN


async def test_store_issue_replaces_the_previous_token_of_the_owner(
    store: Store, clock: FakeClock
) -> None:
    key = store.keys.token("ref1", RESET)
    now = clock.time()
    await store.issue_token(key, record(now, "a" * 64), [], now)
    await store.issue_token(key, record(now + 1, "b" * 64), [], now + 1)
    old = await store.use_token(key, "a" * 64, RESET, now + 2, consume=True)
    assert old.check is TokenCheck.MISMATCH
    new = await store.use_token(key, "b" * 64, RESET, now + 2, consume=True)
    assert new.check is TokenCheck.OK


async def test_store_issue_counts_limits_and_stores_nothing_once_full(
    store: Store, clock: FakeClock
) -> None:
    key = store.keys.token("ref1", RESET)
    limit = Limit("email_hour", store.keys.address_limit("addr1", RESET, 3600), 2, 3600)
    now = clock.time()
    for i in range(2):
        rec = record(now + i, f"{i}" * 64, token_id=f"tok_{i}")
        assert await store.issue_token(key, rec, [limit], now + i) is None
    refused = await store.issue_token(key, record(now + 2, "9" * 64), [limit], now + 2)
    assert refused is not None
    assert refused.scope == "email_hour"
    assert refused.retry_after == pytest.approx(3600 - 2)
    # the refused issue left the live token alone
    assert (await store.use_token(key, "1" * 64, RESET, now + 3, consume=False)).check is (
        TokenCheck.OK
    )
    assert (await store.use_token(key, "9" * 64, RESET, now + 3, consume=False)).check is (
        TokenCheck.MISMATCH
    )


async def test_store_lets_exactly_one_of_many_concurrent_confirms_through(
    store: Store, clock: FakeClock
) -> None:
    key = store.keys.token("ref1", RESET)
    now = clock.time()
    await store.issue_token(key, record(now), [], now)
    outcomes = await asyncio.gather(
        *(store.use_token(key, "h" * 64, RESET, now, consume=True) for _ in range(50))
    )
    assert sorted(o.check.value for o in outcomes) == ["ok"] + ["unknown"] * 49


# ---------------------------------------------------------------- the service


def links(otpd: Otpd) -> TokenService:
    return otpd.links


class Captured:
    """Messages the service hands to the dispatcher, captured before delivery."""

    def __init__(self, otpd: Otpd) -> None:
        self.messages: list[Message] = []
        enqueue = otpd.dispatcher.enqueue

        async def capture(message: Message, *, task_id: str | None = None) -> Any:
            self.messages.append(message)
            return await enqueue(message, task_id=task_id)

        otpd.dispatcher.enqueue = capture  # type: ignore[method-assign]

    def token(self, i: int = -1) -> str:
        match = re.search(r"[?&]token=([A-Za-z0-9._\-]+)", self.messages[i].text)
        assert match, self.messages[i].text
        return match.group(1)


async def test_tokens_are_owner_ref_dot_32_random_url_safe_bytes(otpd: Otpd) -> None:
    captured = Captured(otpd)
    for user in ("u1", "u2"):
        await links(otpd).request_verification(user_id=user, email="a@example.com")
    await links(otpd).request_verification(user_id="u1", email="a@example.com")
    tokens = [captured.token(i) for i in range(3)]
    for token in tokens:
        assert re.fullmatch(r"[0-9a-f]{24}\.[A-Za-z0-9_\-]{43}", token), token
    refs = [t.split(".")[0] for t in tokens]
    assert refs[0] == refs[2] != refs[1]  # one slot per (purpose, user)
    assert len({t.split(".")[1] for t in tokens}) == 3
    assert "u1" not in refs[0]


async def test_service_confirms_a_verification_once(otpd: Otpd, clock: FakeClock) -> None:
    captured = Captured(otpd)
    issued = await links(otpd).request_verification(
        user_id="u1", email="Ada@Example.COM", name="Ada"
    )
    assert issued.expires_at == clock.time() + 86400
    owner = await links(otpd).confirm_verification(captured.token())
    assert (owner.user_id, owner.email) == ("u1", "Ada@example.com")
    with pytest.raises(InvalidTokenError):
        await links(otpd).confirm_verification(captured.token())


async def test_service_raises_rate_limited_on_the_sixth_verification_of_a_day(
    otpd: Otpd,
) -> None:
    for _ in range(5):
        await links(otpd).request_verification(user_id="u1", email="a@example.com")
    with pytest.raises(RateLimitedError) as info:
        await links(otpd).request_verification(user_id="u1", email="a@example.com")
    assert info.value.scope == "user_day"
    assert info.value.retry_after == 86400


async def test_reset_dropped_by_a_limit_records_a_failed_task_and_no_token(
    otpd: Otpd, clock: FakeClock
) -> None:
    captured = Captured(otpd)
    for i in range(3):
        await links(otpd).request_password_reset(user_id=f"u{i}", email="a@example.com")
    with structlog.testing.capture_logs() as logs:
        dropped = await links(otpd).request_password_reset(user_id="u9", email="a@example.com")
    assert len(captured.messages) == 3
    assert dropped.expires_at == clock.time() + 3600
    task = await otpd.tasks.get(dropped.task_id)
    assert (task.status.value, task.last_error, task.tag) == (
        "failed",
        "rate_limited: email_hour",
        "password_reset",
    )
    (audit,) = [e for e in logs if e["event"].startswith("audit.")]
    assert (audit["event"], audit["scope"]) == ("audit.password_reset_rate_limited", "email_hour")


async def test_many_concurrent_confirms_through_the_service_succeed_once(otpd: Otpd) -> None:
    captured = Captured(otpd)
    await links(otpd).request_password_reset(user_id="u1", email="a@example.com")
    token = captured.token()

    async def confirm() -> bool:
        try:
            await links(otpd).confirm_password_reset(token)
        except InvalidTokenError:
            return False
        return True

    results = await asyncio.gather(*(confirm() for _ in range(40)))
    assert results.count(True) == 1


async def test_malformed_tokens_are_refused_without_a_store_round_trip(
    otpd: Otpd, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    use_token = otpd.store.use_token

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await use_token(*args, **kwargs)

    monkeypatch.setattr(otpd.store, "use_token", counting)
    for token in ("", "abc", "0" * 24 + "." + "A" * 42, "g" * 24 + "." + "A" * 43, "x" * 5000):
        with pytest.raises(InvalidTokenError):
            await links(otpd).check_password_reset(token)
    assert calls == 0
    with pytest.raises(InvalidTokenError):
        await links(otpd).check_password_reset("0" * 24 + "." + "A" * 43)
    assert calls == 1


async def test_audit_log_tells_reasons_apart_that_the_api_does_not(
    otpd: Otpd, clock: FakeClock
) -> None:
    captured = Captured(otpd)
    await links(otpd).request_password_reset(user_id="u1", email="a@example.com")
    first = captured.token()
    await links(otpd).request_password_reset(user_id="u1", email="a@example.com")
    second = captured.token()
    with structlog.testing.capture_logs() as logs:
        for token in (first, "junk"):
            with pytest.raises(InvalidTokenError):
                await links(otpd).confirm_password_reset(token)
        clock.advance(3600)
        with pytest.raises(InvalidTokenError):
            await links(otpd).confirm_password_reset(second)
    reasons = [(e["reason"], e.get("user_id")) for e in logs]
    assert reasons == [("mismatch", "u1"), ("malformed", None), ("expired", "u1")]
    assert not any(second in repr(e) or first in repr(e) for e in logs)
