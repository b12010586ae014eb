"""What every service is built with, as one bundle (as providers get ``ProviderDeps``)."""

from __future__ import annotations

from dataclasses import dataclass

from otpd.clock import Clock
from otpd.crypto import Hasher
from otpd.dispatch import Dispatcher
from otpd.metrics import Metrics
from otpd.sealing import Keyring
from otpd.services.audit import AuditTrail
from otpd.services.limits import LimitPolicy
from otpd.services.suppressions import SuppressionList
from otpd.store import Store
from otpd.templating import TemplateRenderer

__all__ = ["ServiceDeps"]


@dataclass(frozen=True, slots=True)
class ServiceDeps:
    store: Store
    dispatcher: Dispatcher
    renderer: TemplateRenderer
    hasher: Hasher
    clock: Clock
    metrics: Metrics
    limits: LimitPolicy
    keyring: Keyring  # what is kept at rest beyond keyed hashes is sealed with it
    audit: AuditTrail
    suppressions: SuppressionList | None = None  # None: nothing is refused up front
