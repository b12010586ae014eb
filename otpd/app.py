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
from typing import Any, Literal, Self

import structlog

from otpd.clock import Clock, SystemClock
from otpd.config import Config
from otpd.crypto import Hasher
from otpd.dispatch import DeliveryQueue, Dispatcher
from otpd.errors import ConfigError
from otpd.metrics import Metrics
from otpd.models import Channel, ProviderHealth
from otpd.outbox import dev_outbox_refusals
from otpd.providers.base import ProviderDeps
from otpd.providers.chain import ProviderChain
from otpd.providers.registry import build_providers
from otpd.providers.session import SharedSession
from otpd.sealing import Keyring
from otpd.services.audit import AuditTrail
from otpd.services.deliveries import DeliveryReports
from otpd.services.deps import ServiceDeps
from otpd.services.fallback import ChannelFallback
from otpd.services.limits import LimitPolicy, SendingLimits
from otpd.services.links import LinkService, Reminders
from otpd.services.messages import MessageService
from otpd.services.otp import OtpService
from otpd.services.sms_guard import SmsGuard
from otpd.services.suppressions import SuppressionList
from otpd.services.tasks import TaskService
from otpd.services.totp import TotpService
from otpd.store import Store, StoreDeps, create_store
from otpd.store.fallback import FallbackStore
from otpd.templating import TemplateRenderer
from otpd.webhooks.registry import Webhooks

__all__ = ["ROLES", "Otpd", "Role", "role_problem"]

log = structlog.get_logger("otpd")

Role = Literal["all", "api", "worker"]
"""What one daemon does: ``all`` (serve and deliver), ``api`` (serve the HTTP API and
queue tasks, deliver nothing) or ``worker`` (deliver what the durable queue holds)."""
ROLES: tuple[Role, ...] = ("all", "api", "worker")


def role_problem(config: Config, role: Role) -> str | None:
    """Why ``config`` cannot run a daemon in ``role``, or None: the ``api`` and ``worker``
    roles hand tasks over through the durable queue, sealed with the shared secret."""
    if role == "all":
        return None
    if config.store.backend != "redis" or not config.dispatch.durable:
        return (
            f'role {role!r} needs store.backend = "redis" and dispatch.durable = true '
            "(the durable queue carries tasks from api to worker processes)"
        )
    if not config.security.secret_key:
        return (
            f"role {role!r} needs security.secret_key (OTPD_SECRET_KEY): a worker opens "
            "the messages an api process sealed"
        )
    return None


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Otpd:
    """Everything otpd does, as one async context manager. It cannot be opened twice.

    ``store`` replaces the backend that ``store.backend`` names: any unopened
    :class:`~otpd.store.Store`, which the daemon opens and closes. ``role`` (see
    :data:`Role`) splits serving from delivering across processes.
    """

    otp: OtpService
    totp: TotpService
    audit: AuditTrail
    tasks: TaskService
    sms_guard: SmsGuard
    messages: MessageService
    links: LinkService
    reminders: Reminders
    limits: LimitPolicy
    dispatcher: Dispatcher
    store: Store
    chains: dict[Channel, ProviderChain]
    deliveries: DeliveryReports
    fallback: ChannelFallback
    webhooks: Webhooks
    suppressions: SuppressionList

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        role: Role = "all",
    ) -> None:
        problem = role_problem(config, role) if role in ROLES else f"unknown role {role!r}"
        if problem is not None:
            raise ConfigError(problem)
        self.config = config
        self.role: Role = role
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
            # closed after the dispatcher, whose last deliveries it records
            self.audit = await stack.enter_async_context(
                AuditTrail(self.config.audit, self.store, clock=self.clock)
            )
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
            self.suppressions = SuppressionList(self.store, self.hasher, self.clock, self.audit)
            self.deliveries = DeliveryReports(
                self.store,
                hasher=self.hasher,
                keyring=self.keyring,
                metrics=self.metrics,
                audit=self.audit,
                ttl=self.config.dispatch.task_ttl_seconds,
                suppressions=self.suppressions,
            )
            # the webhook verifiers (.ses fetches SNS certificates through the shared session)
            self.webhooks = Webhooks.from_config(self.config, self.store, self.clock, http)
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
                    audit=self.audit,
                    reports=self.deliveries,
                    suppressions=self.suppressions,
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
            if self.role != "all":
                raise ConfigError(f"role {self.role!r} needs a Redis store")
            return None
        from otpd.dispatch.durable import DurableQueue
        from otpd.store.redis.streams import TaskStreams

        durable = DurableQueue(
            TaskStreams(primary),
            self.config.dispatch,
            keyring=self.keyring,
            consumer=self.instance_id,
            clock=self.clock,
            socket_timeout=self.config.store.socket_timeout_seconds,
            # with no workers here, a job the stream cannot take has nowhere to go: refused
            fallback=fallback if self.role != "api" else None,
        )
        if self.role == "api":
            from otpd.dispatch.intake import IntakeQueue

            return IntakeQueue(durable)
        return durable

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
            audit=self.audit,
            suppressions=self.suppressions,
        )
        self.sms_guard = SmsGuard(self.config.sms, deps)
        self.fallback = ChannelFallback(
            self.store,
            keyring=self.keyring,
            clock=self.clock,
            metrics=self.metrics,
            audit=self.audit,
            after_seconds=self.config.otp.fallback_after_seconds,
            trail_ttl=self.config.dispatch.task_ttl_seconds,
        )
        self.fallback.attach(self.dispatcher, self.sms_guard)
        # a failed task, or one reported undelivered, sends its code's fallback
        self.dispatcher.failures = self.fallback
        self.deliveries.failures = self.fallback
        self.otp = OtpService(
            self.config.otp, deps, sms_guard=self.sms_guard, fallback=self.fallback
        )
        self.tasks = TaskService(self.store, self.dispatcher)
        self.links = LinkService(self.config.links, self.config.tokens, deps)
        self.reminders = Reminders(self.links)
        self.messages = MessageService(deps, sms_guard=self.sms_guard)
        self.totp = TotpService(
            self.config.totp, deps, issuer=self.config.totp.issuer or self.config.product.name
        )

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
            "workers": 0 if self.role == "api" else self.config.dispatch.workers,
            "role": self.role,
            "instance_id": self.instance_id,
        }
        return checks

    async def messaging_health(self) -> list[ProviderHealth]:
        out: list[ProviderHealth] = []
        for channel in Channel:
            out += await self.chains[channel].health()
        return out
