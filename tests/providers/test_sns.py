"""SNS provider against a moto server: a transactional SMS to the number, one long-lived
client, no threads, and the translation of SNS errors into transient or permanent
failures."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, NoCredentialsError

from otpd.config import SnsConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message
from otpd.providers.dev import ConsoleSmsProvider
from otpd.providers.sns import SnsProvider
from tests.conftest import Moto, free_port
from tests.providers import aws
from tests.providers.helpers import build_from_config

REGION = "ap-southeast-2"
TO = "+14155550123"
CODE = "493817"
MESSAGE = Message(channel=Channel.SMS, to=TO, text=f"Your code is {CODE}", tag="otp_code")


def sns_config(endpoint_url: str, **overrides: str) -> SnsConfig:
    values = {
        "region": REGION,
        "endpoint_url": endpoint_url,
        "sender_id": "ExampleCo",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        **overrides,
    }
    return SnsConfig(**values)


def client_error(code: str, message: str, status: int = 400) -> ClientError:
    return aws.client_error("Publish", code, message, status)


def assert_no_personal_data(error: DeliveryError) -> None:
    for text in (str(error), error.reason, repr(error.details)):
        assert TO not in text
        assert TO[1:] not in text
        assert CODE not in text


def sms_attributes(body: str | bytes) -> dict[str, tuple[str, str]]:
    """``MessageAttributes`` of a form-encoded Publish: name -> (data type, value)."""
    text = body.decode() if isinstance(body, bytes) else body
    form = {k: v[0] for k, v in parse_qs(text).items()}
    out = {}
    for key, name in form.items():
        if key.startswith("MessageAttributes.entry.") and key.endswith(".Name"):
            prefix = key.removesuffix(".Name")
            out[name] = (form[f"{prefix}.Value.DataType"], form[f"{prefix}.Value.StringValue"])
    return out


async def published_sms(moto: Moto) -> list[dict[str, Any]]:
    sms: list[dict[str, Any]] = (await moto.data())["sns"]["SMS"]
    return sms


@pytest.fixture
async def sns(moto: Moto) -> AsyncIterator[SnsProvider]:
    async with SnsProvider(sns_config(moto.url)) as provider:
        yield provider


async def test_send_publishes_the_text_to_the_number(sns: SnsProvider, moto: Moto) -> None:
    result = await sns.send(MESSAGE)

    [sms] = await published_sms(moto)
    assert result.provider == "sns"
    assert result.message_id == sms["message_id"]
    assert sms["phone_number"] == TO
    assert sms["message"] == f"Your code is {CODE}"


async def test_send_marks_the_sms_transactional_with_the_sender_id(moto: Moto) -> None:
    bodies: list[str | bytes] = []

    def record(request: Any, **_: Any) -> None:
        bodies.append(request.body)

    async with SnsProvider(sns_config(moto.url)) as provider:
        provider.client.meta.events.register("before-send.sns.Publish", record)
        await provider.send(MESSAGE)

    [body] = bodies
    assert sms_attributes(body) == {
        "AWS.SNS.SMS.SMSType": ("String", "Transactional"),
        "AWS.SNS.SMS.SenderID": ("String", "ExampleCo"),
    }


async def test_no_sender_id_attribute_when_none_is_configured(moto: Moto) -> None:
    bodies: list[str | bytes] = []

    def record(request: Any, **_: Any) -> None:
        bodies.append(request.body)

    async with SnsProvider(sns_config(moto.url, sender_id="")) as provider:
        provider.client.meta.events.register("before-send.sns.Publish", record)
        await provider.send(MESSAGE)

    [body] = bodies
    assert sms_attributes(body) == {"AWS.SNS.SMS.SMSType": ("String", "Transactional")}
    assert len(await published_sms(moto)) == 1


async def test_one_client_serves_every_send_and_aclose_closes_it(moto: Moto) -> None:
    provider = SnsProvider(sns_config(moto.url))
    async with provider:
        client = provider.client
        await provider.send(MESSAGE)
        await provider.send(MESSAGE)
        assert provider.client is client
        # aiobotocore keeps one aiohttp session per proxy; it exists once a request ran
        [http] = client._endpoint.http_session._sessions.values()
        assert not http.closed

    assert http.closed
    with pytest.raises(RuntimeError, match="not open"):
        _ = provider.client
    assert len(await published_sms(moto)) == 2


async def test_sending_adds_no_threads_even_when_resolving_a_hostname(moto: Moto) -> None:
    # "localhost" instead of 127.0.0.1, so aiohttp has to resolve a name; the first
    # request (HTTP session, connection, DNS lookup) is inside the measurement
    endpoint = moto.url.replace("127.0.0.1", "localhost")
    async with SnsProvider(sns_config(endpoint)) as provider:
        before = threading.active_count(), aws.os_thread_count()
        for _ in range(3):
            await provider.send(MESSAGE)
        after = threading.active_count(), aws.os_thread_count()
    # <=, not ==: a thread another test left behind may end meanwhile
    assert after[0] <= before[0]
    assert after[1] <= before[1]
    assert len(await published_sms(moto)) == 3


@pytest.mark.parametrize("number", ["+1-415-555", "call me"])
async def test_number_sns_refuses_is_permanent(sns: SnsProvider, number: str) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await sns.send(Message(channel=Channel.SMS, to=number, text="x"))
    assert caught.value.reason == "invalid_recipient"
    assert caught.value.provider == "sns"
    assert number not in str(caught.value)


async def test_text_sns_refuses_is_transient_so_another_provider_may_send_it(
    sns: SnsProvider,
) -> None:
    with pytest.raises(TransientDeliveryError) as caught:
        await sns.send(Message(channel=Channel.SMS, to=TO, text="x" * 1601))
    assert caught.value.reason == "sns_invalid_parameter"
    assert_no_personal_data(caught.value)


async def test_unreachable_endpoint_is_a_transient_network_error() -> None:
    async with SnsProvider(sns_config(f"http://127.0.0.1:{free_port()}")) as provider:
        with pytest.raises(TransientDeliveryError) as caught:
            await provider.send(MESSAGE)
    assert caught.value.reason == "network"
    assert_no_personal_data(caught.value)


# moto only checks the number's format and the length; the other SNS answers are built by
# hand from the codes and messages SNS documents.
@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (
            client_error(
                "InvalidParameter",
                f"Invalid parameter: PhoneNumber Reason: {TO} is not valid to publish to",
            ),
            PermanentDeliveryError,
            "invalid_recipient",
        ),
        (
            client_error("InvalidParameterValue", f"Phone number {TO} is opted out"),
            PermanentDeliveryError,
            "opted_out",
        ),
        (
            client_error("InvalidParameter", "Invalid parameter: SenderID"),
            TransientDeliveryError,
            "sns_invalid_parameter",
        ),
        (client_error("Throttled", "Rate exceeded", 429), TransientDeliveryError, "throttled"),
        (client_error("Throttling", "Rate exceeded"), TransientDeliveryError, "throttled"),
        (client_error("KMSThrottling", "KMS busy"), TransientDeliveryError, "throttled"),
        (client_error("KMSDisabled", "key disabled"), TransientDeliveryError, "sns_kms"),
        (client_error("AuthorizationError", "not allowed", 403), TransientDeliveryError, "auth"),
        (client_error("InvalidClientTokenId", "bad key", 403), TransientDeliveryError, "auth"),
        (client_error("InternalError", "oops", 500), TransientDeliveryError, "server_error"),
        (client_error("SomethingNew", "?"), TransientDeliveryError, "sns_error"),
        (NoCredentialsError(), TransientDeliveryError, "no_credentials"),
        (ConnectTimeoutError(endpoint_url="https://x.test"), TransientDeliveryError, "timeout"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_classify_maps_sns_errors(error: Exception, kind: type[DeliveryError], reason: str) -> None:
    classified = SnsProvider(sns_config("")).classify(error)
    assert type(classified) is kind
    assert classified.reason == reason
    assert_no_personal_data(classified)


async def test_health_reports_region_and_endpoint(moto: Moto) -> None:
    async with SnsProvider(sns_config(moto.url)) as provider:
        assert await provider.health() == {"region": REGION, "endpoint": moto.url}
    async with SnsProvider(sns_config("")) as provider:
        assert await provider.health() == {
            "region": REGION,
            "endpoint": f"https://sns.{REGION}.amazonaws.com",
        }


def test_registry_builds_sns_from_config() -> None:
    data = {"sms": {"providers": ["sns", "console"]}, "sns": {"region": REGION}}
    providers = build_from_config(Channel.SMS, data)
    assert [type(p) for p in providers] == [SnsProvider, ConsoleSmsProvider]
    assert isinstance(providers[0], SnsProvider)
    assert providers[0].region == REGION
