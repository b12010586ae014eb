"""The daemon object: opens store, providers, dispatcher and services in order.

Usable without HTTP::

    async with Otpd(load_config()) as otpd:
        issued = await otpd.otp.issue(user_id="42", channel="email", email="a@example.com")
"""

from __future__ import annotations

import enum
import secrets
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import structlog

from otpd.clock import Clock, SystemClock
from otpd.config import Config
from otpd.crypto import Hasher
from otpd.dispatch import Dispatcher
from otpd.metrics import Metrics
from otpd.models import Channel, ProviderHealth
from otpd.providers.base import ProviderDeps
from otpd.providers.chain import ProviderChain
from otpd.providers.registry import build_providers
from otpd.providers.session import SharedSession
from otpd.services.deps import ServiceDeps
from otpd.services.limits import LimitPolicy, SendingLimits
from otpd.services.links import LinkService, Reminders
from otpd.services.messages import MessageService
from otpd.services.otp import OtpService
from otpd.services.sms_guard import SmsGuard
from otpd.services.tasks import TaskService
from otpd.store import Store, StoreDeps, create_store
from otpd.templating import TemplateRenderer

__all__ = ["Otpd"]

log = structlog.get_logger("otpd")


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Otpd:
    """Everything otpd does, as one async context manager. It cannot be opened twice.

    ``store`` replaces the backend that ``store.backend`` names: any unopened
    :class:`~otpd.store.Store`, which the daemon opens and closes.
    """

    otp: OtpService
    tasks: TaskService
    sms_guard: SmsGuard
    messages: MessageService
    links: LinkService
    reminders: Reminders
    limits: LimitPolicy
    dispatcher: Dispatcher
    store: Store
    chains: dict[Channel, ProviderChain]

    def __init__(
        self, config: Config, *, clock: Clock | None = None, store: Store | None = None
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self.renderer = TemplateRenderer(
            config.product,
            config.email.templates_dir,
            allow_http=config.server.env != "production",
        )
        self._given_store = store
        self._state = _State.NEW
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        if self._state is not _State.NEW:
            raise RuntimeError(f"Otpd cannot be opened twice (it is {self._state.value})")
        self._state = _State.OPEN
        async with AsyncExitStack() as stack:
            self.hasher = Hasher(self._secret())
            self.renderer.preload()
            store = self._given_store or create_store(
                self.config.store.backend,
                self.config.store,
                StoreDeps(clock=self.clock, metrics=self.metrics),
            )
            self.store = await stack.enter_async_context(store)
            self.limits = LimitPolicy(self.config, self.hasher, self.metrics)
            http = await stack.enter_async_context(SharedSession())
            provider_deps = ProviderDeps(http=http, clock=self.clock)
            self.chains = {}
            for channel in Channel:
                chain = ProviderChain(
                    channel,
                    build_providers(channel, self.config, provider_deps),
                    breaker=self.config.breaker,
                    clock=self.clock,
                    metrics=self.metrics,
                )
                self.chains[channel] = await stack.enter_async_context(chain)
            # Entered last, so on exit it drains first, while providers are still open.
            self.dispatcher = await stack.enter_async_context(
                Dispatcher(
                    self.store,
                    self.chains,
                    self.config.dispatch,
                    clock=self.clock,
                    metrics=self.metrics,
                    admission=SendingLimits(self.limits, self.store),
                )
            )
            self._build_services()
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    def _secret(self) -> bytes:
        if self.config.security.secret_key:
            return self.config.security.secret_key.encode()
        log.warning(
            "security.ephemeral_secret_key",
            hint="set OTPD_SECRET_KEY; codes issued now stop verifying after a restart",
        )
        return secrets.token_bytes(32)

    def _build_services(self) -> None:
        deps = ServiceDeps(
            store=self.store,
            dispatcher=self.dispatcher,
            renderer=self.renderer,
            hasher=self.hasher,
            clock=self.clock,
            metrics=self.metrics,
            limits=self.limits,
        )
        self.sms_guard = SmsGuard(self.config.sms, deps)
        self.otp = OtpService(self.config.otp, deps, sms_guard=self.sms_guard)
        self.tasks = TaskService(self.store)
        self.links = LinkService(self.config.links, self.config.tokens, deps)
        self.reminders = Reminders(self.links)
        self.messages = MessageService(deps, sms_guard=self.sms_guard)

    # ------------------------------------------------------------------ health

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """One entry per check: ``{"store": {"ok": True}, "dispatcher": {...}}``."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            await self.store.ping()
            checks["store"] = {"ok": True, "backend": self.config.store.backend}
        except Exception as exc:
            checks["store"] = {
                "ok": False,
                "backend": self.config.store.backend,
                "error": type(exc).__name__,
            }
        checks["dispatcher"] = {
            "ok": self.dispatcher.running,
            "queue_depth": self.dispatcher.depth,
            "workers": self.config.dispatch.workers,
        }
        return checks

    async def messaging_health(self) -> list[ProviderHealth]:
        out: list[ProviderHealth] = []
        for channel in Channel:
            out += await self.chains[channel].health()
        return out
