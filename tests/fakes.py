"""A provider whose outcomes a test scripts, for testing the chain and the dispatcher."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from otpd.errors import DeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import Provider


class ScriptedProvider(Provider):
    """Each send pops the next outcome: ``None`` delivers, an exception is raised.

    When the script is empty, ``default`` applies. ``gate`` lets a test hold sends open.
    """

    channel = Channel.EMAIL

    def __init__(
        self,
        name: str,
        outcomes: Iterable[BaseException | None] = (),
        *,
        default: BaseException | None = None,
        channel: Channel = Channel.EMAIL,
    ) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]
        self.channel = channel  # type: ignore[misc]
        self.outcomes: deque[BaseException | None] = deque(outcomes)
        self.default = default
        self.sent: list[Message] = []
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def _send(self, message: Message) -> SendResult:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.outcomes.popleft() if self.outcomes else self.default
        if outcome is not None:
            raise outcome
        self.sent.append(message)
        return SendResult(self.name, f"{self.name}-{len(self.sent)}")

    async def aclose(self) -> None:
        self.closed = True


def transient(reason: str = "boom") -> DeliveryError:
    from otpd.errors import TransientDeliveryError

    return TransientDeliveryError(f"{reason} happened", reason=reason)


def permanent(reason: str = "invalid_recipient") -> DeliveryError:
    from otpd.errors import PermanentDeliveryError

    return PermanentDeliveryError("recipient refused", reason=reason)
