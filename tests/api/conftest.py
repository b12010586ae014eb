"""Fixtures of the API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock
from tests.api.helpers import Client, Start
from tests.conftest import ConfigFactory, open_client


@pytest.fixture
async def start(make_config: ConfigFactory, backend: str, clock: FakeClock) -> AsyncIterator[Start]:
    """Open a daemon with extra config sections on the parametrized store, plus a client."""
    async with AsyncExitStack() as stack:

        async def factory(**sections: dict[str, Any]) -> tuple[Otpd, Client]:
            config = make_config(backend, **sections)
            daemon = await stack.enter_async_context(Otpd(config, clock=clock))
            client = await open_client(daemon)
            stack.push_async_callback(client.close)
            return daemon, client

        yield factory
