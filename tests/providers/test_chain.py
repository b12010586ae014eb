"""Failover across providers and the circuit breaker, with time driven by a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from otpd.clock import FakeClock
from otpd.config import BreakerConfig, EmailConfig
from otpd.errors import PermanentDeliveryError, TransientDeliveryError
from otpd.metrics import Metrics
from otpd.models import Channel, Message
from otpd.providers.breaker import CircuitBreaker, CircuitState
from otpd.providers.chain import ProviderChain
from tests.fakes import ScriptedProvider, permanent, transient


def state_of(breaker: CircuitBreaker) -> CircuitState:
    """Read the state through a call, so the type checker does not narrow it."""
    return breaker.state


MSG = Message(Channel.EMAIL, "a@example.com", "hello", "subject", tag="test")


def chain_of(
    *providers: ScriptedProvider, clock: FakeClock, metrics: Metrics | None = None
) -> ProviderChain:
    return ProviderChain(
        Channel.EMAIL,
        providers,
        breaker=BreakerConfig(failure_threshold=5, recovery_seconds=60, success_threshold=2),
        clock=clock,
        metrics=metrics or Metrics(),
    )


async def test_first_provider_down_message_goes_through_the_second(clock: FakeClock) -> None:
    first = ScriptedProvider("ses", default=transient())
    second = ScriptedProvider("smtp")
    async with chain_of(first, second, clock=clock) as chain:
        result = await chain.send(MSG)
    assert result.provider == "smtp"
    assert second.sent == [MSG]
    assert first.calls == 1


async def test_permanent_error_stops_the_chain_without_failover(clock: FakeClock) -> None:
    first = ScriptedProvider("ses", default=permanent())
    second = ScriptedProvider("smtp")
    async with chain_of(first, second, clock=clock) as chain:
        with pytest.raises(PermanentDeliveryError) as info:
            await chain.send(MSG)
    assert info.value.provider == "ses"
    assert second.calls == 0
    # the provider answered properly: its circuit is not charged
    assert chain.breakers["ses"].consecutive_failures == 0


async def test_unexpected_exceptions_are_classified_as_transient(clock: FakeClock) -> None:
    first = ScriptedProvider("ses", default=RuntimeError("library bug"))
    second = ScriptedProvider("smtp")
    async with chain_of(first, second, clock=clock) as chain:
        assert (await chain.send(MSG)).provider == "smtp"
    assert chain.breakers["ses"].last_error == "unexpected: unexpected RuntimeError"


async def test_all_providers_failing_is_one_transient_error(clock: FakeClock) -> None:
    async with chain_of(
        ScriptedProvider("ses", default=transient("throttled")),
        ScriptedProvider("smtp", default=OSError("refused")),
        clock=clock,
    ) as chain:
        with pytest.raises(TransientDeliveryError) as info:
            await chain.send(MSG)
    assert info.value.reason == "all_providers_failed"
    assert "ses: throttled" in info.value.message
    assert "smtp: network" in info.value.message


async def test_circuit_opens_after_threshold_half_opens_and_closes_after_recovery(
    clock: FakeClock,
) -> None:
    flaky = ScriptedProvider("ses", default=transient())
    backup = ScriptedProvider("smtp")
    metrics = Metrics()
    async with chain_of(flaky, backup, clock=clock, metrics=metrics) as chain:
        breaker = chain.breakers["ses"]
        for _ in range(5):
            await chain.send(MSG)
        assert breaker.state is CircuitState.OPEN
        calls = flaky.calls
        for _ in range(3):  # open: ses is skipped entirely
            assert (await chain.send(MSG)).provider == "smtp"
        assert flaky.calls == calls

        clock.advance(59)
        await chain.send(MSG)
        assert flaky.calls == calls
        assert state_of(breaker) is CircuitState.OPEN

        clock.advance(1)
        flaky.default = None  # recovered
        assert (await chain.send(MSG)).provider == "ses"
        assert state_of(breaker) is CircuitState.HALF_OPEN
        assert (await chain.send(MSG)).provider == "ses"
        assert state_of(breaker) is CircuitState.CLOSED
        gauge = metrics.registry.get_sample_value(
            "otpd_breaker_state", {"channel": "email", "provider": "ses"}
        )
        assert gauge == 0
        opened = metrics.registry.get_sample_value(
            "otpd_breaker_transitions_total", {"channel": "email", "provider": "ses", "to": "open"}
        )
        assert opened == 1


async def test_a_failure_while_half_open_reopens_the_circuit(clock: FakeClock) -> None:
    flaky = ScriptedProvider("ses", default=transient())
    async with chain_of(flaky, ScriptedProvider("smtp"), clock=clock) as chain:
        for _ in range(5):
            await chain.send(MSG)
        clock.advance(60)
        await chain.send(MSG)  # trial call fails
        assert chain.breakers["ses"].state is CircuitState.OPEN
        clock.advance(30)
        calls = flaky.calls
        await chain.send(MSG)
        assert flaky.calls == calls  # the recovery time started again


async def test_every_circuit_open_is_no_provider_available(clock: FakeClock) -> None:
    only = ScriptedProvider("ses", default=transient())
    async with chain_of(only, clock=clock) as chain:
        for _ in range(5):
            with pytest.raises(TransientDeliveryError):
                await chain.send(MSG)
        with pytest.raises(TransientDeliveryError) as info:
            await chain.send(MSG)
    assert info.value.reason == "no_provider_available"


async def test_health_lists_providers_in_chain_order_with_breaker_state(clock: FakeClock) -> None:
    first = ScriptedProvider("ses", default=transient("throttled"))
    async with chain_of(first, ScriptedProvider("smtp"), clock=clock) as chain:
        await chain.send(MSG)
        health = await chain.health()
    assert [(h.name, h.state, h.consecutive_failures) for h in health] == [
        ("ses", "closed", 1),
        ("smtp", "closed", 0),
    ]
    assert health[0].last_error == "throttled: throttled happened"
    assert health[1].last_success_at == clock.time()


async def test_breaker_last_error_is_redacted(clock: FakeClock) -> None:
    leaky = ScriptedProvider("ses", default=transient("x"))
    leaky.default = TransientDeliveryError("rejected jane.doe@example.com", reason="rejected")
    async with chain_of(leaky, ScriptedProvider("smtp"), clock=clock) as chain:
        await chain.send(MSG)
    assert chain.breakers["ses"].last_error == "rejected: rejected j***@example.com"


async def test_chain_closes_every_provider(clock: FakeClock) -> None:
    a, b = ScriptedProvider("ses"), ScriptedProvider("smtp")
    async with chain_of(a, b, clock=clock):
        pass
    assert a.closed and b.closed


# ---------------------------------------------------------------- the message's fault


POISON = [
    "=?utf-8?q?x=0D=0A?=@example.com",
    "a\r\nBcc: evil@example.net",
    "two@example.com, three@example.com",
    "no-at-sign",
]


async def test_messages_that_cannot_be_built_never_open_the_circuit(
    clock: FakeClock, tmp_path: Path
) -> None:
    """Poison recipients fail their own task for good; the next good message goes out at
    once (before, five of them opened the breaker of every MIME-building provider)."""
    from otpd.providers.dev import OutboxEmailProvider

    outbox = OutboxEmailProvider(tmp_path, EmailConfig())
    chain = ProviderChain(
        Channel.EMAIL,
        [outbox],
        breaker=BreakerConfig(failure_threshold=5, recovery_seconds=60, success_threshold=2),
        clock=clock,
        metrics=Metrics(),
    )
    async with chain:
        for address in POISON * 5:
            with pytest.raises(PermanentDeliveryError) as caught:
                await chain.send(Message(Channel.EMAIL, address, "t", "s"))
            assert caught.value.reason == "invalid_recipient"
            assert "example" not in caught.value.message  # the address is never quoted
        assert state_of(chain.breakers["outbox"]) is CircuitState.CLOSED
        result = await chain.send(MSG)
    assert result.provider == "outbox"
    assert len(list(tmp_path.glob("*.eml"))) == 1


async def test_refusals_of_one_request_fail_over_without_counting_against_the_provider(
    clock: FakeClock,
) -> None:
    refused = TransientDeliveryError(
        "sendgrid rejected the request (400)", reason="provider_rejected", blames_provider=False
    )
    first = ScriptedProvider("sendgrid", default=refused)
    second = ScriptedProvider("smtp")
    async with chain_of(first, second, clock=clock) as chain:
        for _ in range(20):
            assert (await chain.send(MSG)).provider == "smtp"
    assert first.calls == 20  # never skipped: its circuit stayed closed
    assert state_of(chain.breakers["sendgrid"]) is CircuitState.CLOSED


async def test_failures_that_blame_the_provider_still_open_its_circuit(clock: FakeClock) -> None:
    first = ScriptedProvider("sendgrid", default=transient("provider_error"))
    second = ScriptedProvider("smtp")
    async with chain_of(first, second, clock=clock) as chain:
        for _ in range(20):
            assert (await chain.send(MSG)).provider == "smtp"
    assert first.calls == 5
    assert state_of(chain.breakers["sendgrid"]) is CircuitState.OPEN
