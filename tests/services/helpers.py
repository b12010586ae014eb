"""Building services without a whole daemon."""

from __future__ import annotations

from otpd.clock import Clock
from otpd.config import Config
from otpd.crypto import Hasher
from otpd.dispatch import Dispatcher
from otpd.metrics import Metrics
from otpd.sealing import Keyring
from otpd.services.audit import AuditTrail
from otpd.services.deps import ServiceDeps
from otpd.services.limits import LimitPolicy
from otpd.store import Store
from otpd.templating import TemplateRenderer
from tests.conftest import TEST_SECRET


def service_deps(config: Config, store: Store, clock: Clock) -> ServiceDeps:
    """Real parts around ``store``; the dispatcher is built but never opened."""
    metrics = Metrics()
    hasher = Hasher(TEST_SECRET.encode())
    return ServiceDeps(
        store=store,
        dispatcher=Dispatcher(store, {}, config.dispatch, clock=clock, metrics=metrics),
        renderer=TemplateRenderer(config.product),
        hasher=hasher,
        clock=clock,
        metrics=metrics,
        limits=LimitPolicy(config, hasher, metrics),
        keyring=Keyring.from_secret(TEST_SECRET.encode()),
        audit=AuditTrail(config.audit, store, clock=clock),
    )
