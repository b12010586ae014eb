"""POST /v1/messages: templates and raw messages, idempotency, header safety, limits."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import Config
from otpd.crypto import api_key_digest
from otpd.models import Message, TaskRecord
from otpd.outbox import latest
from otpd.services.messages import IDEMPOTENCY_SCOPE
from otpd.store.keys import KeyLayout
from otpd.store.memory import MemoryStore
from otpd.store.redis import RedisStore
from tests.api.helpers import MOBILE, Client, Start, error_of, wait_task
from tests.conftest import ConfigFactory, open_client, outbox_files

TO = "reader@example.com"


@pytest.fixture
async def start(make_config: ConfigFactory, backend: str, clock: FakeClock) -> AsyncIterator[Start]:
    """Open a daemon with extra config sections on the parametrized store, plus a client."""
    async with AsyncExitStack() as stack:

        async def factory(**sections: dict[str, Any]) -> tuple[Otpd, Client]:
            daemon = await stack.enter_async_context(
                Otpd(make_config(backend, **sections), clock=clock)
            )
            client = await open_client(daemon)
            stack.push_async_callback(client.close)
            return daemon, client

        yield factory


async def send(client: Client, body: dict[str, Any]) -> str:
    resp = await client.post("/v1/messages", json=body)
    assert resp.status == 202, await resp.text()
    data = await resp.json()
    assert set(data) == {"task_id"}
    task_id: str = data["task_id"]
    return task_id


async def sent(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    task = await wait_task(client, await send(client, body))
    assert task["status"] == "sent", task
    return task


def parse_eml(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def only_eml(config: Config) -> EmailMessage:
    (path,) = outbox_files(config, ".eml")
    return parse_eml(path)


def body_of(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    assert part.get_content_type() == f"text/{subtype}"
    content: str = part.get_content()
    return content


async def test_otp_template_email_has_text_and_html(client: Client, otpd: Otpd) -> None:
    task = await sent(
        client,
        {
            "channel": "email",
            "to": TO,
            "template": "otp_code",
            "context": {"code": "123456", "ttl_minutes": 10},
        },
    )
    assert task["channel"] == "email"
    assert task["provider"] == "outbox"
    msg = only_eml(otpd.config)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["To"] == TO
    assert "123456" in str(msg["Subject"])
    text, html = body_of(msg, "plain"), body_of(msg, "html")
    assert "123456" in text
    assert "10 minutes" in text
    assert "123456" in html
    assert "<html" in html
    assert msg["Message-ID"]
    assert msg["Date"]


async def test_template_context_is_html_escaped(client: Client, otpd: Otpd) -> None:
    await sent(
        client,
        {
            "channel": "email",
            "to": TO,
            "template": "otp_code",
            "context": {"code": "<b>x</b>", "ttl_minutes": 10},
        },
    )
    html = body_of(only_eml(otpd.config), "html")
    assert "<b>x</b>" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html


async def test_raw_email_keeps_subject_text_and_html(client: Client, otpd: Otpd) -> None:
    await sent(
        client,
        {
            "channel": "email",
            "to": TO,
            "subject": "Quarterly news",
            "text": "Plain words.",
            "html": "<p>Rich <em>words</em>.</p>",
        },
    )
    msg = only_eml(otpd.config)
    assert msg["Subject"] == "Quarterly news"
    assert body_of(msg, "plain").strip() == "Plain words."
    assert body_of(msg, "html").strip() == "<p>Rich <em>words</em>.</p>"


async def test_raw_email_without_html_is_plain_text(client: Client, otpd: Otpd) -> None:
    await sent(client, {"channel": "email", "to": TO, "subject": "Hi", "text": "Only text."})
    msg = only_eml(otpd.config)
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "Only text."


async def test_raw_sms_is_written_as_txt(client: Client, otpd: Otpd) -> None:
    task = await sent(client, {"channel": "sms", "to": "+49 170 1234567", "text": "Hello SMS"})
    assert task["channel"] == "sms"
    assert task["provider"] == "console"
    (path,) = outbox_files(otpd.config, ".txt")
    data = path.read_text()
    assert f"To: {MOBILE}\n" in data  # normalised to E.164
    assert data.rstrip().endswith("Hello SMS")
    assert outbox_files(otpd.config, ".eml") == []


async def test_sms_template_renders_the_code(client: Client, otpd: Otpd) -> None:
    await sent(
        client,
        {
            "channel": "sms",
            "to": MOBILE,
            "template": "otp_code",
            "context": {"code": "654321", "ttl_minutes": 5},
        },
    )
    (path,) = outbox_files(otpd.config, ".txt")
    assert "654321 is your" in path.read_text()


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"channel": "email", "to": TO, "template": "no_such_template"}, {"template"}),
        ({"channel": "sms", "to": MOBILE, "template": "no_such_template"}, {"template"}),
        (
            {
                "channel": "email",
                "to": TO,
                "template": "otp_code",
                "context": {"code": "1", "ttl_minutes": 1},
                "subject": "Hi",
            },
            {"subject"},
        ),
        ({"channel": "email", "to": TO, "template": "otp_code", "text": "x"}, {"text"}),
        ({"channel": "email", "to": TO, "template": "otp_code", "context": {}}, {"context"}),
        ({"channel": "email", "to": TO, "subject": "s", "text": "t", "context": {}}, {"context"}),
        ({"channel": "email", "subject": "s", "text": "t"}, {"to"}),
        ({"channel": "email", "to": "not-an-address", "subject": "s", "text": "t"}, {"to"}),
        (
            {"channel": "email", "to": f"{TO}\r\nBcc: v@example.com", "subject": "s", "text": "t"},
            {"to"},
        ),
        ({"channel": "email", "to": 42, "subject": "s", "text": "t"}, {"to"}),
        ({"channel": "sms", "to": "0170 1234567", "text": "t"}, {"to"}),
        ({"channel": "sms", "to": "+442071838750", "text": "t"}, {"to"}),
        ({"channel": "sms", "to": TO, "text": "t"}, {"to"}),
        ({"channel": "email", "to": TO, "subject": "s"}, {"text"}),
        ({"channel": "email", "to": TO, "text": "t"}, {"subject"}),
        ({"channel": "sms", "to": MOBILE}, {"text"}),
        ({"channel": "sms", "to": MOBILE, "text": "t", "subject": "s"}, {"subject"}),
        ({"channel": "sms", "to": MOBILE, "text": "x" * 1601}, {"text"}),
        ({"channel": "fax", "to": TO, "subject": "s", "text": "t"}, {"channel"}),
        ({"channel": "email", "to": TO, "subject": "s", "text": "t", "cc": TO}, {"cc"}),
        (
            {"channel": "email", "to": TO, "subject": "s", "text": "t", "idempotency_key": ""},
            {"idempotency_key"},
        ),
        ({"channel": "email", "to": TO, "template": "otp_code", "context": [1]}, {"context"}),
    ],
)
async def test_bad_message_is_422_naming_the_field(
    client: Client, body: dict[str, Any], fields: set[str]
) -> None:
    details = await error_of(await client.post("/v1/messages", json=body), 422, "validation_error")
    assert fields <= set(details["fields"]), details


async def test_same_idempotency_key_returns_the_same_task_and_sends_once(
    client: Client, otpd: Otpd
) -> None:
    body = {
        "channel": "email",
        "to": TO,
        "subject": "Receipt",
        "text": "Thanks.",
        "idempotency_key": "order-42",
    }
    first = await client.post("/v1/messages", json=body)
    assert first.status == 202
    assert "Idempotent-Replayed" not in first.headers
    task_id = (await first.json())["task_id"]
    second = await client.post("/v1/messages", json=body)
    assert second.status == 202
    assert second.headers["Idempotent-Replayed"] == "true"
    assert await second.json() == {"task_id": task_id}
    assert (await wait_task(client, task_id))["status"] == "sent"
    assert len(outbox_files(otpd.config, ".eml")) == 1
    other = await send(client, {**body, "idempotency_key": "order-43"})
    assert other != task_id


@pytest.mark.parametrize(
    "change",
    [
        {"text": "Thanks again."},
        {"to": "someone.else@example.com"},
        {"subject": "Receipt (2)"},
        {"channel": "sms", "to": MOBILE, "subject": None},
    ],
    ids=["text", "to", "subject", "channel"],
)
async def test_a_reused_idempotency_key_with_another_payload_is_422_and_sends_nothing(
    client: Client, otpd: Otpd, change: dict[str, Any]
) -> None:
    body = {
        "channel": "email",
        "to": TO,
        "subject": "Receipt",
        "text": "Thanks.",
        "idempotency_key": "order-7",
    }
    task_id = await send(client, body)
    other = {k: v for k, v in {**body, **change}.items() if v is not None}
    resp = await client.post("/v1/messages", json=other)
    details = await error_of(resp, 422, "idempotency_key_reused")
    assert details == {}
    assert "Idempotent-Replayed" not in resp.headers
    # the first request still replays, and only it was ever sent
    again = await client.post("/v1/messages", json=body)
    assert again.status == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == {"task_id": task_id}
    assert (await wait_task(client, task_id))["status"] == "sent"
    assert len(outbox_files(otpd.config, ".eml")) == 1
    assert outbox_files(otpd.config, ".txt") == []


async def test_the_same_payload_spelt_differently_replays(client: Client) -> None:
    """The key is bound to the request as validated: key order and the spelling of the
    recipient's domain do not make it another request."""
    body = {"channel": "email", "to": TO, "subject": "s", "text": "t", "idempotency_key": "k9"}
    task_id = await send(client, body)
    respelt = {
        "idempotency_key": "k9",
        "text": "t",
        "to": "reader@EXAMPLE.com",
        "subject": "s",
        "channel": "email",
    }
    resp = await client.post("/v1/messages", json=respelt)
    assert resp.status == 202, await resp.text()
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert await resp.json() == {"task_id": task_id}


async def test_a_key_whose_first_request_is_still_running_is_409(
    client: Client, otpd: Otpd
) -> None:
    body = {"channel": "email", "to": TO, "subject": "s", "text": "t", "idempotency_key": "slow"}
    entered, proceed = asyncio.Event(), asyncio.Event()
    enqueue = otpd.dispatcher.enqueue

    async def held(message: Message, *, task_id: str | None = None) -> TaskRecord:
        entered.set()
        await proceed.wait()
        return await enqueue(message, task_id=task_id)

    otpd.dispatcher.enqueue = held  # type: ignore[method-assign]
    first = asyncio.ensure_future(client.post("/v1/messages", json=body))
    await asyncio.wait_for(entered.wait(), 10)
    await error_of(await client.post("/v1/messages", json=body), 409, "idempotency_key_in_use")
    # a different payload under the key is refused as reused, even while it runs
    changed = {**body, "text": "other"}
    await error_of(await client.post("/v1/messages", json=changed), 422, "idempotency_key_reused")
    proceed.set()
    done = await first
    assert done.status == 202
    task_id = (await done.json())["task_id"]
    replay = await client.post("/v1/messages", json=body)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert await replay.json() == {"task_id": task_id}
    assert (await wait_task(client, task_id))["status"] == "sent"
    assert len(outbox_files(otpd.config, ".eml")) == 1


async def test_a_request_refused_before_its_task_exists_frees_the_key(start: Start) -> None:
    """A 429 (or 503) leaves no task behind, so the key must not name one: a retry runs
    again (here: is refused again, not told 409 or replayed), and the key stays free."""
    daemon, client = await start(sms={"global_hour": 1})
    await sent(client, {"channel": "sms", "to": MOBILE, "text": "uses the hour's one SMS"})
    body = {"channel": "sms", "to": MOBILE, "text": "hello", "idempotency_key": "retry-me"}
    for _ in range(2):
        resp = await client.post("/v1/messages", json=body)
        await error_of(resp, 429, "sms_blocked")
    # the dev outbox keeps a trace of the refusal: the newest entry for the number
    newest = latest(daemon.config.outbox.dir, MOBILE)
    assert newest is not None
    assert newest.refused == "sms_blocked: global_hourly_cap"
    email_body = {"channel": "email", "to": TO, "subject": "s", "text": "t"}
    resp = await client.post("/v1/messages", json={**email_body, "idempotency_key": "retry-me"})
    assert resp.status == 202, await resp.text()
    assert "Idempotent-Replayed" not in resp.headers
    assert (await wait_task(client, (await resp.json())["task_id"]))["status"] == "sent"


async def test_the_stored_key_holds_a_digest_and_the_task_never_the_message(
    client: Client, otpd: Otpd
) -> None:
    body = {
        "channel": "email",
        "to": TO,
        "subject": "Private subject",
        "text": "Private words.",
        "idempotency_key": "stored-1",
    }
    task_id = await send(client, body)
    ref = otpd.hasher.digest("idempotency", "default", "stored-1")
    key = KeyLayout(otpd.config.store.key_prefix).remembered(IDEMPOTENCY_SCOPE, ref)
    raw: object
    if isinstance(otpd.store, RedisStore):
        raw = await otpd.store.redis.get(key)
    else:
        assert isinstance(otpd.store, MemoryStore)
        raw = otpd.store._data[key]
    assert isinstance(raw, str)
    assert re.fullmatch(rf"[0-9a-f]{{64}}:{task_id}", raw), raw
    for secret in (TO, "reader", "Private", "stored-1"):
        assert secret not in raw


async def test_header_injection_in_subject_adds_no_header(client: Client, otpd: Otpd) -> None:
    await sent(
        client,
        {
            "channel": "email",
            "to": TO,
            "subject": "Hi\r\nBcc: victim@example.com",
            "text": "x",
        },
    )
    (path,) = outbox_files(otpd.config, ".eml")
    msg = parse_eml(path)
    assert msg["Bcc"] is None
    assert "\n" not in str(msg["Subject"])
    assert str(msg["Subject"]).startswith("Hi")
    assert b"\nBcc:" not in path.read_bytes()
    assert msg.get_all("To") == [TO]


async def test_header_injection_in_from_name_adds_no_header(start: Start) -> None:
    daemon, client = await start(email={"from_name": "otpd\r\nBcc: victim@example.com"})
    await sent(client, {"channel": "email", "to": TO, "subject": "Hi", "text": "x"})
    (path,) = outbox_files(daemon.config, ".eml")
    msg = parse_eml(path)
    assert msg["Bcc"] is None
    assert b"\nBcc:" not in path.read_bytes()
    assert msg["From"].addresses[0].addr_spec == daemon.config.email.from_address


async def test_per_recipient_limit_fails_the_extra_task_but_accepts_it(start: Start) -> None:
    daemon, client = await start(email={"per_recipient_hour": 2})
    body = {"channel": "email", "to": TO, "subject": "Hi", "text": "x"}
    for _ in range(2):
        await sent(client, body)
    task = await wait_task(client, await send(client, body))
    assert task["status"] == "failed"
    assert task["last_error"].startswith("rate_limited")
    assert len(outbox_files(daemon.config, ".eml")) == 2
    # the limit is per recipient: another address still goes through
    await sent(client, {**body, "to": "someone.else@example.com"})
    # addresses are compared case-insensitively in the domain
    task = await wait_task(client, await send(client, {**body, "to": "reader@EXAMPLE.com"}))
    assert task["status"] == "failed"


@pytest.mark.parametrize("key", ["locale", "self"])
async def test_reserved_context_key_is_422_not_500(client: Client, key: str) -> None:
    body = {
        "channel": "email",
        "to": TO,
        "template": "otp_code",
        "context": {"code": "1", "ttl_minutes": 1, key: "x"},
    }
    resp = await client.post("/v1/messages", json=body)
    assert resp.status in (202, 422), await resp.text()


async def test_lone_surrogate_in_text_is_422(client: Client) -> None:
    raw = b'{"channel": "email", "to": "reader@example.com", "subject": "s", "text": "\\ud800"}'
    resp = await client.post("/v1/messages", data=raw)
    await error_of(resp, 422, "validation_error")


async def test_concurrent_identical_sends_with_one_key_make_one_task(
    client: Client, otpd: Otpd
) -> None:
    body = {
        "channel": "email",
        "to": TO,
        "subject": "Once",
        "text": "Only once.",
        "idempotency_key": "burst-1",
    }
    responses = await asyncio.gather(*(client.post("/v1/messages", json=body) for _ in range(20)))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {202, 409}, statuses
    accepted = [r for r in responses if r.status == 202]
    for r in responses:
        if r.status == 409:
            await error_of(r, 409, "idempotency_key_in_use")
    task_ids = {(await r.json())["task_id"] for r in accepted}
    assert len(task_ids) == 1
    fresh = [r for r in accepted if "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1
    assert all(r.headers["Idempotent-Replayed"] == "true" for r in accepted if r not in fresh)
    assert (await wait_task(client, task_ids.pop()))["status"] == "sent"
    assert len(outbox_files(otpd.config, ".eml")) == 1


async def test_concurrent_different_sends_with_one_key_send_one(client: Client, otpd: Otpd) -> None:
    bodies = [
        {"channel": "email", "to": TO, "subject": "s", "text": f"n{i}", "idempotency_key": "race"}
        for i in range(20)
    ]
    responses = await asyncio.gather(*(client.post("/v1/messages", json=b) for b in bodies))
    statuses = [r.status for r in responses]
    assert statuses.count(202) == 1, statuses
    assert set(statuses) <= {202, 409, 422}, statuses
    for r in responses:
        if r.status != 202:
            code = "idempotency_key_reused" if r.status == 422 else "idempotency_key_in_use"
            await error_of(r, r.status, code)
    (winner,) = [i for i, r in enumerate(responses) if r.status == 202]
    task_id = (await responses[winner].json())["task_id"]
    assert (await wait_task(client, task_id))["status"] == "sent"
    (eml,) = outbox_files(otpd.config, ".eml")
    assert body_of(parse_eml(eml), "plain").strip() == f"n{winner}"


async def test_idempotency_keys_are_scoped_per_api_client(start: Start) -> None:
    keys = [
        {"name": "web", "sha256": api_key_digest("web-key-0123456789abcdef")},
        {"name": "cron", "sha256": api_key_digest("cron-key-0123456789abcdef")},
    ]
    _, client = await start(auth={"keys": keys})
    body = {"channel": "email", "to": TO, "subject": "s", "text": "t", "idempotency_key": "k"}
    ids = []
    for key in ("web-key-0123456789abcdef", "cron-key-0123456789abcdef"):
        resp = await client.post(
            "/v1/messages", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.status == 202, await resp.text()
        assert "Idempotent-Replayed" not in resp.headers
        ids.append((await resp.json())["task_id"])
    assert ids[0] != ids[1]
    # another payload under the same key is a conflict for its own client only
    other = {**body, "text": "another"}
    web = {"Authorization": "Bearer web-key-0123456789abcdef"}
    resp = await client.post("/v1/messages", json=other, headers=web)
    await error_of(resp, 422, "idempotency_key_reused")
    resp = await client.post("/v1/messages", json={**body, "idempotency_key": "k2"}, headers=web)
    assert resp.status == 202
    cron = {"Authorization": "Bearer cron-key-0123456789abcdef"}
    resp = await client.post("/v1/messages", json={**other, "idempotency_key": "k2"}, headers=cron)
    assert resp.status == 202, await resp.text()
    assert "Idempotent-Replayed" not in resp.headers
