"""What the API tests share: the client type, the uniform error shape, task and mail reads."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp.test_utils import TestClient

from otpd.api.routes import OTPD
from otpd.app import Otpd
from otpd.config import Config
from tests.conftest import outbox_files, wait_idle

Client = TestClient[Any, Any]
Start = Callable[..., Awaitable[tuple[Otpd, Client]]]

EMAIL = "user@example.com"
MOBILE = "+491701234567"  # a German mobile number: valid and SMS-capable
TOKEN_IN_TEXT = re.compile(r"https?://\S+?[?&]token=([A-Za-z0-9._\-]+)")


def assert_error(body: Any, code: str | None = None) -> dict[str, Any]:
    """The uniform error shape, exactly; returns ``details``."""
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "details"}
    assert isinstance(err["code"], str)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", err["code"])
    assert isinstance(err["message"], str)
    assert err["message"]
    assert isinstance(err["details"], dict)
    if code is not None:
        assert err["code"] == code, body
    details: dict[str, Any] = err["details"]
    return details


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return assert_error(await resp.json(), code)


async def wait_task(
    client: Client, task_id: str, *, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The task as ``GET /v1/tasks/{id}`` shows it once the daemon's deliveries settled."""
    await wait_idle(client.app[OTPD])
    resp = await client.get(f"/v1/tasks/{task_id}", headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["status"] in ("sent", "failed"), body
    return body


def parse_eml(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_of(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    content: str = part.get_content()
    return content


def newest_mail(config: Config, tag: str) -> EmailMessage:
    files = [p for p in outbox_files(config, ".eml") if f"-{tag}-" in p.name]
    assert files, f"no {tag} email in the outbox"
    return parse_eml(max(files, key=lambda p: p.name))


def link_in(msg: EmailMessage) -> str:
    """The one link carrying a token, which the text and HTML parts must agree on."""
    text_links = {m.group(0) for m in TOKEN_IN_TEXT.finditer(body_of(msg, "plain"))}
    assert len(text_links) == 1, text_links
    (link,) = text_links
    assert f'href="{link}"' in body_of(msg, "html")
    return link


def token_of(link: str) -> str:
    (token,) = parse_qs(urlsplit(link).query)["token"]
    return token
