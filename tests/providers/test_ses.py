"""SES provider against a moto server: raw MIME delivery, one long-lived client, no
threads, and the translation of SES errors into transient or permanent failures."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import json
import threading
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from otpd.clock import FakeClock
from otpd.config import BreakerConfig, SesConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.metrics import Metrics
from otpd.models import Channel, Message
from otpd.providers.chain import ProviderChain
from otpd.providers.dev import OutboxEmailProvider
from otpd.providers.ses import SesProvider
from tests.conftest import Moto, free_port
from tests.providers import aws
from tests.providers.helpers import (
    CODE,
    MESSAGE,
    MSGID,
    SENDER,
    TO,
    assert_hostile_email_arrived_as_text,
    build_from_config,
    hostile_message,
    hostile_sender,
)

REGION = "eu-west-1"


def ses_config(endpoint_url: str, **overrides: str) -> SesConfig:
    values = {
        "region": REGION,
        "endpoint_url": endpoint_url,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        **overrides,
    }
    return SesConfig(**values)


def client_error(code: str, message: str, status: int = 400) -> ClientError:
    return aws.client_error("SendEmail", code, message, status)


def assert_no_personal_data(error: DeliveryError) -> None:
    for text in (str(error), error.reason, repr(error.details)):
        assert TO not in text
        assert CODE not in text


@pytest.fixture
async def ses(moto: Moto) -> AsyncIterator[SesProvider]:
    """An open SES provider with its sender identity created in moto."""
    async with SesProvider(ses_config(moto.url), SENDER) as provider:
        await provider.client.create_email_identity(EmailIdentity=SENDER.from_address)
        yield provider


async def sent_raw_messages(moto: Moto) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = (await moto.data())["ses"]["RawMessage"]
    return messages


async def test_send_delivers_raw_mime_with_our_headers_and_both_parts(
    ses: SesProvider, moto: Moto
) -> None:
    result = await ses.send(MESSAGE)

    [sent] = await sent_raw_messages(moto)
    assert result.provider == "ses"
    assert result.message_id == sent["id"]
    assert set(sent["destinations"]) == {TO}
    assert sent["source"] == SENDER.from_address
    parsed = email.message_from_string(sent["raw_data"], policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["To"] == TO
    assert parsed["Subject"] == "Your sign-in code"
    assert parsed["From"] == "Example Co <no-reply@mail.example.org>"
    assert parsed["Reply-To"] == "help@example.org"
    assert parsed["X-Entity-Ref-ID"] == "task-1"
    assert MSGID.fullmatch(str(parsed["Message-ID"]))
    assert parsed["Date"]
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert isinstance(text, EmailMessage)
    assert isinstance(html, EmailMessage)
    assert text.get_content().strip() == f"Your code is {CODE}"
    assert html.get_content().strip() == f"<p>Your code is <b>{CODE}</b></p>"


@pytest.mark.parametrize("html", [True, False], ids=["multipart", "text-only"])
async def test_encoded_words_in_subject_from_name_and_header_arrive_as_literal_text(
    moto: Moto, html: bool
) -> None:
    async with SesProvider(ses_config(moto.url), hostile_sender()) as provider:
        await provider.client.create_email_identity(EmailIdentity=SENDER.from_address)
        result = await provider.send(hostile_message(html=html))

    [sent] = await sent_raw_messages(moto)
    assert result.message_id == sent["id"]
    assert set(sent["destinations"]) == {TO}
    raw: str = sent["raw_data"]
    assert raw.isascii()
    assert_hostile_email_arrived_as_text(raw.encode("ascii"), html=html)


async def test_configuration_set_is_sent_with_each_email(moto: Moto) -> None:
    bodies: list[dict[str, Any]] = []

    def record(request: Any, **_: Any) -> None:
        bodies.append(json.loads(request.body))

    config = ses_config(moto.url, configuration_set="otpd-transactional")
    async with SesProvider(config, SENDER) as provider:
        await provider.client.create_email_identity(EmailIdentity=SENDER.from_address)
        provider.client.meta.events.register("before-send.sesv2.SendEmail", record)
        await provider.send(MESSAGE)

    [body] = bodies
    assert body["ConfigurationSetName"] == "otpd-transactional"
    assert body["Destination"] == {"ToAddresses": [TO]}
    assert set(body["Content"]) == {"Raw"}


async def test_every_email_is_marked_auto_submitted_and_7bit_clean(
    ses: SesProvider, moto: Moto
) -> None:
    # non-ASCII text in short lines: where a MIME writer would pick 8bit
    text = "Grüße!\n验证码: 493817\n"
    short = dataclasses.replace(MESSAGE, subject="Grüße", text=text, html=f"<p>{text}</p>")
    raw_sent: list[bytes] = []

    def record(request: Any, **_: Any) -> None:
        raw_sent.append(base64.b64decode(json.loads(request.body)["Content"]["Raw"]["Data"]))

    ses.client.meta.events.register("before-send.sesv2.SendEmail", record)
    await ses.send(short)
    await ses.send(dataclasses.replace(short, html=""))

    recorded = await sent_raw_messages(moto)
    assert len(raw_sent) == len(recorded) == 2
    for data, sent in zip(raw_sent, recorded, strict=True):
        assert all(byte < 0x80 for byte in data)
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        assert parsed.get_all("Auto-Submitted") == ["auto-generated"]
        leaves = [part for part in parsed.walk() if not part.is_multipart()]
        for part in leaves:
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
        plain = parsed.get_body(("plain",))
        assert isinstance(plain, EmailMessage)
        assert plain.get_content() == text.replace("\n", "\r\n")
        # and moto, standing in for SES, received those very bytes
        assert sent["raw_data"].replace("\r\n", "\n") == data.decode().replace("\r\n", "\n")


async def test_one_client_serves_every_send_and_aclose_closes_it(moto: Moto) -> None:
    provider = SesProvider(ses_config(moto.url), SENDER)
    async with provider:
        client = provider.client
        await client.create_email_identity(EmailIdentity=SENDER.from_address)
        await provider.send(MESSAGE)
        await provider.send(MESSAGE)
        assert provider.client is client
        # aiobotocore keeps one aiohttp session per proxy; it exists once a request ran
        sessions: dict[Any, aiohttp.ClientSession] = client._endpoint.http_session._sessions
        [http] = sessions.values()
        assert not http.closed

    assert http.closed
    with pytest.raises(RuntimeError, match="not open"):
        _ = provider.client
    assert len(await sent_raw_messages(moto)) == 2


async def test_sending_adds_no_threads_even_when_resolving_a_hostname(
    ses: SesProvider, moto: Moto
) -> None:
    # "localhost" instead of 127.0.0.1, so aiohttp has to resolve a name; a fresh provider,
    # so its first request (HTTP session, connection, DNS lookup) is inside the measurement
    endpoint = moto.url.replace("127.0.0.1", "localhost")
    async with SesProvider(ses_config(endpoint), SENDER) as provider:
        before = threading.active_count(), aws.os_thread_count()
        for _ in range(3):
            await provider.send(MESSAGE)
        after = threading.active_count(), aws.os_thread_count()
    # <=, not ==: a thread another test left behind may end meanwhile
    assert after[0] <= before[0]
    assert after[1] <= before[1]
    assert len(await sent_raw_messages(moto)) == 3


async def test_thread_count_check_would_catch_the_threaded_resolver() -> None:
    # the control for the test above: aiohttp's ThreadedResolver runs getaddrinfo on
    # the loop's executor, and the same measurement sees that thread
    before = threading.active_count()
    await aiohttp.ThreadedResolver().resolve("localhost", 80)
    assert threading.active_count() > before


async def test_unverified_sender_is_transient_so_the_chain_fails_over(
    moto: Moto, tmp_path: Any
) -> None:
    ses = SesProvider(ses_config(moto.url), SENDER)  # no identity created
    outbox = OutboxEmailProvider(tmp_path, SENDER)
    chain = ProviderChain(
        Channel.EMAIL,
        [ses, outbox],
        breaker=BreakerConfig(),
        clock=FakeClock(),
        metrics=Metrics(),
    )
    async with chain:
        with pytest.raises(TransientDeliveryError) as caught:
            await ses.send(MESSAGE)
        result = await chain.send(MESSAGE)

    assert caught.value.reason == "ses_identity_not_verified"
    assert caught.value.provider == "ses"
    assert_no_personal_data(caught.value)
    assert result.provider == "outbox"
    assert await sent_raw_messages(moto) == []


async def test_malformed_recipient_is_permanent_and_never_reaches_ses(
    ses: SesProvider, moto: Moto
) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await ses.send(Message(channel=Channel.EMAIL, to="jane.doe", text="x", subject="s"))
    # refused while writing the message (build_email), before any request
    assert caught.value.reason == "invalid_recipient"
    assert "jane.doe" not in str(caught.value)
    assert await sent_raw_messages(moto) == []


async def test_unreachable_endpoint_is_a_transient_network_error() -> None:
    config = ses_config(f"http://127.0.0.1:{free_port()}")
    async with SesProvider(config, SENDER) as provider:
        with pytest.raises(TransientDeliveryError) as caught:
            await provider.send(MESSAGE)
    assert caught.value.reason == "network"
    assert_no_personal_data(caught.value)


# moto only rejects unverified senders; the other SES answers are built by hand from the
# codes and messages SES documents.
@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (
            client_error("MessageRejected", f"Illegal address: {TO}"),
            PermanentDeliveryError,
            "ses_message_rejected",
        ),
        (
            client_error("MessageRejected", f"Address blacklisted. {TO}"),
            PermanentDeliveryError,
            "ses_message_rejected",
        ),
        (
            client_error(
                "MessageRejected",
                "Email address is not verified. The following identities failed the check "
                f"in region EU-WEST-1: {TO}",
            ),
            TransientDeliveryError,
            "ses_identity_not_verified",
        ),
        (
            client_error("MessageRejected", "Message length is more than 10485760 bytes long"),
            PermanentDeliveryError,  # the message's fault: retrying cannot help
            "ses_content_rejected",
        ),
        (
            client_error("BadRequestException", f"Missing final '@domain': {TO}"),
            PermanentDeliveryError,
            "invalid_recipient",
        ),
        (
            client_error("MailFromDomainNotVerifiedException", "MAIL FROM not verified"),
            TransientDeliveryError,
            "ses_mail_from_not_verified",
        ),
        (
            client_error("AccountSuspendedException", "suspended"),
            TransientDeliveryError,
            "ses_account_suspended",
        ),
        (
            client_error("SendingPausedException", "paused"),
            TransientDeliveryError,
            "ses_sending_paused",
        ),
        (
            client_error("NotFoundException", "configuration set does not exist"),
            TransientDeliveryError,
            "ses_not_found",
        ),
        (
            client_error("TooManyRequestsException", "slow down", 429),
            TransientDeliveryError,
            "throttled",
        ),
        (
            client_error("Throttling", "Maximum sending rate exceeded."),
            TransientDeliveryError,
            "throttled",
        ),
        (
            client_error("LimitExceededException", "Daily message quota exceeded"),
            TransientDeliveryError,
            "throttled",
        ),
        (
            client_error("UnrecognizedClientException", "bad key", 403),
            TransientDeliveryError,
            "auth",
        ),
        (client_error("InternalFailure", "oops", 500), TransientDeliveryError, "server_error"),
        (client_error("ServiceUnavailable", "", 503), TransientDeliveryError, "server_error"),
        (client_error("SomethingNew", "?", 400), TransientDeliveryError, "ses_error"),
        (NoCredentialsError(), TransientDeliveryError, "no_credentials"),
        (EndpointConnectionError(endpoint_url="https://x.test"), TransientDeliveryError, "network"),
        (ReadTimeoutError(endpoint_url="https://x.test"), TransientDeliveryError, "timeout"),
        (ConnectionResetError(), TransientDeliveryError, "network"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_classify_maps_ses_errors(error: Exception, kind: type[DeliveryError], reason: str) -> None:
    classified = SesProvider(ses_config(""), SENDER).classify(error)
    assert type(classified) is kind
    assert classified.reason == reason
    assert_no_personal_data(classified)


async def test_health_reports_region_and_endpoint(moto: Moto) -> None:
    async with SesProvider(ses_config(moto.url), SENDER) as provider:
        assert await provider.health() == {"region": REGION, "endpoint": moto.url}
    async with SesProvider(ses_config(""), SENDER) as provider:
        assert await provider.health() == {
            "region": REGION,
            "endpoint": f"https://email.{REGION}.amazonaws.com",
        }


def test_registry_builds_ses_from_config() -> None:
    data = {"email": {"providers": ["ses", "outbox"]}, "ses": {"region": REGION}}
    providers = build_from_config(Channel.EMAIL, data)
    assert [type(p) for p in providers] == [SesProvider, OutboxEmailProvider]
    assert isinstance(providers[0], SesProvider)
    assert providers[0].region == REGION
