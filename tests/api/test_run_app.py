"""``create_app(config)`` is a plain aiohttp application: ``web.run_app`` serves the README
walkthrough with it, in a process of its own, and stops cleanly on SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_SECRET, free_port

RUN_APP = """
import sys
from aiohttp import web
from otpd import create_app, load_config

port, outbox = int(sys.argv[1]), sys.argv[2]
config = load_config(data={"outbox": {"dir": outbox}, "server": {"port": port}}, env={
    "OTPD_SECRET_KEY": sys.argv[3]})
web.run_app(create_app(config), host="127.0.0.1", port=port, print=None)
"""


async def readme_walkthrough(url: str, outbox: Path) -> None:
    """The README's curl walkthrough, step by step, as HTTP requests."""
    async with aiohttp.ClientSession() as http:
        # 1. a code by email and SMS
        body = {
            "user_id": "42",
            "channel": "both",
            "email": "jane@example.com",
            "phone": "+14155552671",
            "client_ip": "203.0.113.7",
            "user_agent": "curl",
        }
        async with http.post(f"{url}/v1/otp", json=body) as resp:
            assert resp.status == 202, await resp.text()
            issued: dict[str, Any] = await resp.json()
        assert [d["channel"] for d in issued["deliveries"]] == ["email", "sms"]
        # 2. + 3. the outbox holds both, the deliveries say sent
        for delivery in issued["deliveries"]:
            for _ in range(200):
                async with http.get(f"{url}/v1/tasks/{delivery['task_id']}") as resp:
                    task = await resp.json()
                if task["status"] in ("sent", "failed"):
                    break
                await asyncio.sleep(0.02)
            assert task["status"] == "sent", task
        (sms,) = outbox.glob("*.txt")
        assert len(list(outbox.glob("*.eml"))) == 1
        code = next(w for w in sms.read_text().split() if w.isdigit() and len(w) == 6)
        # 4. verify once, then no_active_code
        verify = {"user_id": "42", "code": code}
        async with http.post(f"{url}/v1/otp/verify", data=json.dumps(verify)) as resp:
            assert await resp.json() == {"verified": True}
        async with http.post(f"{url}/v1/otp/verify", json={**verify, "code": "000000"}) as resp:
            assert (await resp.json())["reason"] == "no_active_code"
        # 5. a templated message, once per idempotency key
        message = {
            "channel": "email",
            "to": "jane@example.com",
            "template": "new_login_alert",
            "context": {
                "name": "Jane",
                "login_at": "22 Nov 2026, 10:02 UTC",
                "location": "Lisbon",
                "user_agent": "Firefox on Linux",
            },
            "idempotency_key": "login-9931",
        }
        ids = []
        for _ in range(2):
            async with http.post(f"{url}/v1/messages", json=message) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["task_id"])
        assert ids[0] == ids[1]
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(f"{url}{path}") as resp:
                assert resp.status == 200, path


@pytest.mark.slow
async def test_create_app_served_by_web_run_app_passes_the_readme_walkthrough(
    tmp_path: Path,
) -> None:
    port = free_port()
    outbox = tmp_path / "outbox"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_APP, str(port), str(outbox), TEST_SECRET],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                assert proc.poll() is None, "the app exited early"
                try:
                    async with http.get(f"{url}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        await readme_walkthrough(url, outbox)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        output = proc.stdout.read().decode()
        proc.stdout.close()
    assert "dispatcher.stopped" in output, output  # the daemon was closed by cleanup_ctx
    assert "Traceback" not in output, output
