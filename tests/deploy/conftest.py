"""What the deploy tests share: the metric names a running daemon exposes."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock
from tests.api.helpers import EMAIL, MOBILE
from tests.conftest import ConfigFactory, open_client, wait_idle

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC_NAME = re.compile(r"\botpd_[a-z0-9_]+\b")
_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def promtool() -> str:
    """The promtool binary: skipped without one, and failing under ``CI=true`` (as
    ``redis_binary()`` in tests/conftest.py)."""
    binary = shutil.which("promtool")
    if binary is None:
        message = (
            "promtool not found: install it (apt-get install prometheus) to check the "
            "alert rules and the dashboard's queries"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape can hold: the families (listed even before their first
    labelled child exists) with the suffixes of their type."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            names.update(name + suffix for suffix in _SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture
async def metric_names(make_config: ConfigFactory, clock: FakeClock) -> set[str]:
    """The names in ``/metrics`` of a running daemon after some traffic (an email code, an
    SMS, a verification, an unknown path), so labelled series exist too."""
    config = make_config("memory", sms={"daily_budget": 5.0})
    async with Otpd(config, clock=clock) as daemon:
        client = await open_client(daemon)
        try:
            body = {"user_id": "ops", "channel": "both", "email": EMAIL, "phone": MOBILE}
            resp = await client.post("/v1/otp", json=body)
            assert resp.status == 202, await resp.text()
            await client.post("/v1/otp/verify", json={"user_id": "ops", "code": "000000"})
            await client.get("/no/such/path")
            await wait_idle(daemon)
            resp = await client.get("/metrics")
            assert resp.status == 200
            text = await resp.text()
        finally:
            await client.close()
    names = exposed_names(text)
    assert "otpd_delivery_attempts_total" in names
    return names
