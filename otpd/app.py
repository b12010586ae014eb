"""The daemon object: opens store, providers, dispatcher and services in order.

Usable without HTTP::

    async with Otpd(load_config()) as otpd:
        issued = await otpd.otp.issue(user_id="42", channel="email", email="a@example.com")
"""

from __future__ import annotations

import enum
import os
import secrets
import socket
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import structlog

from otpd.clock import Clock, SystemClock
from otpd.config import Config
from otpd.crypto import Hasher
from otpd.dispatch import DeliveryQueue, Dispatcher
from otpd.metrics import Metrics
from otpd.models import Channel, ProviderHealth
from otpd.outbox import dev_outbox_refusals
from otpd.providers.base import ProviderDeps
from otpd.providers.chain import ProviderChain
from otpd.providers.registry import build_providers
from otpd.providers.session import SharedSession
from otpd.sealing import Keyring
from otpd.services.deps import ServiceDeps
from otpd.services.limits import LimitPolicy, SendingLimits
from otpd.services.links import LinkService, Reminders
from otpd.services.messages import MessageService
from otpd.services.otp import OtpService
from otpd.services.sms_guard import SmsGuard
from otpd.services.tasks import TaskService
from otpd.store import Store, StoreDeps, create_store
from otpd.store.fallback import FallbackStore
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
            secret = self._secret()
            self.hasher = Hasher(secret)
            self.keyring = self._keyring(secret)
            self.renderer.preload()
            store = self._given_store or create_store(
                self.config.store.backend,
                self.config.store,
                StoreDeps(
                    clock=self.clock,
                    metrics=self.metrics,
                    partitions=self.config.dispatch.partitions,
                ),
            )
            self.store = await stack.enter_async_context(store)
            # dev only: a trace in the outbox of each message a limit refused
            refusals = dev_outbox_refusals(self.config)
            if refusals is not None:
                await stack.enter_async_context(refusals)
            self.limits = LimitPolicy(self.config, self.hasher, self.metrics, refusals=refusals)
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
                    attempt_timeout=self.config.dispatch.provider_timeout_seconds,
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
                    queue=self._delivery_queue(),
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

    def _delivery_queue(self) -> DeliveryQueue | None:
        """The durable queue on a Redis store (unless ``dispatch.durable = false``);
        None for the in-process one."""
        if not self.config.dispatch.durable:
            return None
        # imported here so the dev daemon never loads redis-py
        from otpd.store.redis import RedisStore

        fallback = self.store if isinstance(self.store, FallbackStore) else None
        primary = self.store if fallback is None else fallback.primary
        if not isinstance(primary, RedisStore):
            return None
        from otpd.dispatch.durable import DurableQueue
        from otpd.store.redis.streams import TaskStreams

        return DurableQueue(
            TaskStreams(primary),
            self.config.dispatch,
            keyring=self.keyring,
            consumer=self.instance_id,
            clock=self.clock,
            socket_timeout=self.config.store.socket_timeout_seconds,
            fallback=fallback,
        )

    @property
    def instance_id(self) -> str:
        """This daemon's consumer name in the durable queue: ``server.instance_id``, or
        the host name and process id."""
        return self.config.server.instance_id or f"{socket.gethostname()}-{os.getpid()}"

    def _keyring(self, secret: bytes) -> Keyring:
        keys = self.config.security.encryption_keys
        if keys:
            return Keyring([(k.id, k.raw) for k in keys])
        return Keyring.from_secret(secret)

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
            keyring=self.keyring,
        )
        self.sms_guard = SmsGuard(self.config.sms, deps)
        self.otp = OtpService(self.config.otp, deps, sms_guard=self.sms_guard)
        self.tasks = TaskService(self.store, self.dispatcher)
        self.links = LinkService(self.config.links, self.config.tokens, deps)
        self.reminders = Reminders(self.links)
        self.messages = MessageService(deps, sms_guard=self.sms_guard)

    # ------------------------------------------------------------------ health

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """One entry per check: ``{"store": {"ok": True}, "dispatcher": {...}}``; with
        ``store.fallback``, the store's entry says whether it is ``degraded`` and why."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            await self.store.ping()
            checks["store"] = {"ok": True, "backend": self.config.store.backend}
            if isinstance(self.store, FallbackStore):
                # serving from the local fallback is ready, but says so
                checks["store"]["degraded"] = self.store.degraded
                if self.store.degraded:
                    checks["store"]["reason"] = self.store.reason
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
