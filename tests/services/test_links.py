"""The link service without HTTP: token format, single use, limits, audit reasons."""

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
from otpd.services.links import LinkService

VERIFY = "email_verification"
RESET = "password_reset"


# ---------------------------------------------------------------- the service


def links(otpd: Otpd) -> LinkService:
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
    await otpd.dispatcher.wait_idle()  # their deliveries' audit lines come before
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
    # the reset emails may be delivered meanwhile: their lines are not the subject here
    rejected = [e for e in logs if e["event"] == "audit.password_reset_token_rejected"]
    reasons = [(e["reason"], e.get("user_id")) for e in rejected]
    assert reasons == [("mismatch", "u1"), ("malformed", None), ("expired", "u1")]
    assert not any(second in repr(e) or first in repr(e) for e in logs)
