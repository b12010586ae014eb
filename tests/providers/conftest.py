"""Fixtures for the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from otpd.providers.session import SharedSession


@pytest.fixture
async def http() -> AsyncIterator[SharedSession]:
    """The shared HTTP session the REST providers send through, open for one test."""
    async with SharedSession() as shared:
        yield shared
