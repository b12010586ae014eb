"""otpd's app mounted under a prefix of someone else's aiohttp app: the API key is still
required, the public routes stay public, and mailed links point at the prefixed page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from otpd.api import create_app
from otpd.api.routes import OTPD
from otpd.config import load_config
from otpd.crypto import api_key_digest
from tests.api.helpers import link_in, newest_mail
from tests.conftest import TEST_SECRET, wait_idle

KEY = "k-mount-0123456789abcdef0123456789abcdef"


async def test_a_mounted_app_keeps_auth_public_routes_and_its_hosted_links(
    tmp_path: Path,
) -> None:
    config = load_config(
        data={
            "security": {"secret_key": TEST_SECRET},
            "auth": {"keys": [{"name": "parent", "sha256": api_key_digest(KEY)}]},
            "outbox": {"dir": str(tmp_path / "outbox")},
            "links": {
                "base_url": "https://accounts.example.com",
                "hosted": True,
                "success_url": "https://app.example.com/ok",
                "failure_url": "https://app.example.com/sorry",
            },
        },
        env={},
    )
    parent = web.Application()
    otpd_app = create_app(config)
    parent.add_subapp("/otpd", otpd_app)
    client: TestClient[Any, Any] = TestClient(TestServer(parent, host="127.0.0.1"))
    await client.start_server()
    try:
        body = {"user_id": "u1", "email": "ada@example.com"}
        refused = await client.post("/otpd/v1/email-verifications", json=body)
        assert refused.status == 401
        for path in ("/otpd/healthz", "/otpd/readyz", "/otpd/metrics"):
            assert (await client.get(path)).status == 200, path
        headers = {"Authorization": f"Bearer {KEY}"}
        resp = await client.post("/otpd/v1/email-verifications", json=body, headers=headers)
        assert resp.status == 202, await resp.text()
        await wait_idle(otpd_app[OTPD])
        link = link_in(newest_mail(config, "email_verification"))
        assert link.startswith("https://accounts.example.com/otpd/l/verify-email?token=")
        page = await client.get(link.removeprefix("https://accounts.example.com"))
        assert page.status == 200
        assert 'action="/otpd/l/verify-email"' in await page.text()
    finally:
        await client.close()


async def test_unknown_routes_under_v1_ask_for_the_key_first(tmp_path: Path) -> None:
    config = load_config(
        data={
            "security": {"secret_key": TEST_SECRET},
            "auth": {"keys": [{"name": "k", "sha256": api_key_digest(KEY)}]},
            "outbox": {"dir": str(tmp_path)},
        },
        env={},
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    await client.start_server()
    try:
        assert (await client.get("/v1/nope")).status == 401
        assert (await client.get("/v1/otp")).status == 401  # a wrong method, too
        assert (await client.get("/nope")).status == 404
        headers = {"Authorization": f"Bearer {KEY}"}
        assert (await client.get("/v1/nope", headers=headers)).status == 404
        assert (await client.get("/v1/otp", headers=headers)).status == 405
    finally:
        await client.close()
