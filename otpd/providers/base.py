"""The interface every delivery provider implements, real or dev, and what it is built from."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from otpd.clock import Clock
from otpd.config import Config
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.mime import InvalidMessageError
from otpd.providers.session import SharedSession

__all__ = ["Provider", "ProviderDeps"]


@dataclass(frozen=True, slots=True)
class ProviderDeps:
    """Shared resources a provider may use; opened by the daemon before the chains."""

    http: SharedSession
    clock: Clock


class Provider(ABC):
    """A way to deliver messages of one channel.

    Subclasses implement :meth:`from_config`, :meth:`_send` and :meth:`classify`, and open
    and close their resources in :meth:`open` / :meth:`aclose` (called by ``async with``).
    :meth:`send` guarantees that only :class:`~otpd.errors.DeliveryError` leaves a
    provider, so the chain can decide between failover (transient) and giving up
    (permanent).
    """

    name: ClassVar[str]
    channel: ClassVar[Channel]

    def __init__(self) -> None:
        self._opened = False

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        """The provider as ``config`` describes it (its own section, plus the sender for
        email), using the daemon's shared resources in ``deps``."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from config")

    async def __aenter__(self) -> Self:
        if self._opened:
            raise RuntimeError(f"provider {self.name} is already open")
        self._opened = True
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create clients, pools and sessions. Runs inside the event loop."""

    async def aclose(self) -> None:
        """Release everything :meth:`open` created."""

    async def send(self, message: Message) -> SendResult:
        """Deliver ``message`` or raise a transient or permanent :class:`DeliveryError`."""
        try:
            return await self._send(message)
        except DeliveryError as exc:
            exc.provider = exc.provider or self.name
            exc.details["provider"] = exc.provider
            raise
        except asyncio.CancelledError:
            raise
        except InvalidMessageError as exc:
            # the message's fault, not the provider's: it never gets better, nor does it
            # say anything about the provider's health
            reason = "invalid_recipient" if exc.field == "to" else "invalid_message"
            refused = PermanentDeliveryError(str(exc), reason=reason, provider=self.name)
            refused.details["provider"] = self.name
            raise refused from exc
        except Exception as exc:
            error = self.classify(exc)
            error.provider = self.name
            error.details["provider"] = self.name
            raise error from exc

    @abstractmethod
    async def _send(self, message: Message) -> SendResult: ...

    def classify(self, exc: BaseException) -> DeliveryError:
        """Translate a library error into a transient or permanent delivery error.

        The default treats network trouble and anything unknown as transient; providers
        override it with the vendor's error codes.
        """
        if isinstance(exc, TimeoutError):
            return TransientDeliveryError("provider timed out", reason="timeout")
        if isinstance(exc, OSError):
            return TransientDeliveryError(f"network error ({type(exc).__name__})", reason="network")
        return TransientDeliveryError(f"unexpected {type(exc).__name__}", reason="unexpected")

    async def health(self) -> dict[str, Any]:
        """Provider-specific details for ``/v1/health/messaging`` (pool sizes and the like)."""
        return {}
