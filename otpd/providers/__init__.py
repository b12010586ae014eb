"""Delivery providers behind one interface, and the failover chain over them."""

from otpd.providers.base import Provider, ProviderDeps
from otpd.providers.breaker import CircuitBreaker, CircuitState
from otpd.providers.chain import ProviderChain

__all__ = ["CircuitBreaker", "CircuitState", "Provider", "ProviderChain", "ProviderDeps"]
