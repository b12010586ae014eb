"""Dead letters over HTTP: a poison message is listed at once, a transient one after its
attempts, and a replay delivers it under the same task id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from otpd.app import Otpd
from otpd.clock import FakeClock
from tests.api.helpers import Client, Start, error_of
from tests.providers.smtp_server import RecordingHandler, SmtpSink

ADDRESS = "poison@example.com"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    server = await SmtpSink.start()
    try:
        yield server
    finally:
        await server.aclose()


async def smtp_daemon(
    start: Start, sink: SmtpSink, **sections: dict[str, object]
) -> tuple[Otpd, Client]:
    return await start(
        email={"providers": ["smtp"]},
        smtp={"host": "127.0.0.1", "port": sink.port, "tls": "none"},
        **sections,
    )


async def send(client: Client, text: str = "hello") -> str:
    resp = await client.post(
        "/v1/messages", json={"channel": "email", "to": ADDRESS, "subject": "s", "text": text}
    )
    assert resp.status == 202, await resp.text()
    task_id: str = (await resp.json())["task_id"]
    return task_id


async def test_a_poison_message_is_a_dead_letter_at_once_and_replays(
    start: Start, sink: SmtpSink
) -> None:
    handler: RecordingHandler = sink.handler
    handler.rcpt_reply = "550 5.1.1 no such user"
    daemon, client = await smtp_daemon(start, sink)
    task_id = await send(client)
    await daemon.dispatcher.wait_idle()
    resp = await client.get("/v1/dead-letters")
    assert resp.status == 200
    [letter] = (await resp.json())["dead_letters"]
    assert letter["task_id"] == task_id
    assert letter["channel"] == "email"
    assert letter["recipient"] == "p***@example.com"
    assert letter["attempts"] == 1
    assert letter["last_error"]
    assert letter["failed_at"].endswith("Z")
    assert (await (await client.get("/v1/dead-letters?channel=sms")).json()) == {"dead_letters": []}

    handler.rcpt_reply = None  # the address works again
    resp = await client.post(f"/v1/dead-letters/{task_id}/replay")
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"task_id": task_id}
    await daemon.dispatcher.wait_idle()
    task = await (await client.get(f"/v1/tasks/{task_id}")).json()
    assert (task["status"], task["attempts"]) == ("sent", 1)
    assert len(handler.messages) == 1
    assert (await (await client.get("/v1/dead-letters")).json()) == {"dead_letters": []}
    await error_of(await client.post(f"/v1/dead-letters/{task_id}/replay"), 404, "not_found")


async def test_a_transient_failure_is_a_dead_letter_after_max_attempts(
    start: Start, sink: SmtpSink
) -> None:
    handler: RecordingHandler = sink.handler
    handler.data_reply = "451 4.3.0 try later"
    daemon, client = await smtp_daemon(start, sink, dispatch={"max_attempts": 3})
    task_id = await send(client)
    await daemon.dispatcher.wait_idle()
    [letter] = (await (await client.get("/v1/dead-letters?limit=5")).json())["dead_letters"]
    assert (letter["task_id"], letter["attempts"]) == (task_id, 3)


async def test_replaying_an_expired_message_fails_it_as_expired_again(
    start: Start, sink: SmtpSink
) -> None:
    handler: RecordingHandler = sink.handler
    handler.rcpt_reply = "550 5.1.1 no such user"
    daemon, client = await smtp_daemon(start, sink)
    resp = await client.post("/v1/otp", json={"user_id": "9", "channel": "email", "email": ADDRESS})
    assert resp.status == 202, await resp.text()
    task_id = (await resp.json())["deliveries"][0]["task_id"]
    await daemon.dispatcher.wait_idle()
    assert isinstance(daemon.clock, FakeClock)
    daemon.clock.advance(daemon.config.otp.ttl_seconds + 1)
    handler.rcpt_reply = None
    assert (await client.post(f"/v1/dead-letters/{task_id}/replay")).status == 202
    await daemon.dispatcher.wait_idle()
    task = await (await client.get(f"/v1/tasks/{task_id}")).json()
    assert task["status"] == "failed" and task["last_error"].startswith("expired")
    assert handler.messages == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=%EF%BC%91", "limit"),  # a fullwidth digit
        ("channel=fax", "channel"),
        ("nope=1", "nope"),
    ],
)
async def test_bad_dead_letter_queries_are_422_naming_the_field(
    start: Start, query: str, field: str
) -> None:
    _, client = await start()
    details = await error_of(await client.get(f"/v1/dead-letters?{query}"), 422, "validation_error")
    assert field in details["fields"]


@pytest.mark.parametrize("task_id", ["tsk_" + "0" * 24, "nope", "tsk_%00", "x" * 300])
async def test_replaying_what_is_no_dead_letter_is_404(start: Start, task_id: str) -> None:
    _, client = await start()
    await error_of(await client.post(f"/v1/dead-letters/{task_id}/replay"), 404, "not_found")
