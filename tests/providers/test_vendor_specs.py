"""The requests otpd builds, held against the vendors' published OpenAPI documents: each
provider sends to a stand-in (a real local server, or aioresponses for the Twilio SDK),
and openapi-core checks the method, path, credentials, content type and body it received.
Broken requests must fail the same check, so a pass means something."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from otpd.config import EmailConfig, MailgunConfig, SendgridConfig, TwilioConfig, VonageConfig
from otpd.models import Channel, Message
from otpd.providers.base import Provider
from otpd.providers.mailgun import MailgunProvider
from otpd.providers.sendgrid import SendgridProvider
from otpd.providers.session import SharedSession
from otpd.providers.twilio import TwilioProvider
from otpd.providers.vonage import VonageProvider
from tests.providers.helpers import MESSAGE, SENDER, TO
from tests.providers.vendor_specs import (
    SentRequest,
    VendorSpecs,
    form_request,
    json_request,
    load_specs,
    multipart_request,
    recording_vendor,
    request_problems,
    response_problems,
    server_urls,
    spec_dir_or_skip,
)

SENDGRID_PATH = "/v3/mail/send"
MAILGUN_PATH = "/v3/{domain_name}/messages"
TWILIO_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
VONAGE_PATH = "/sms/{format}"

DOMAIN = "mg.example.org"
SID = "AC" + "0123456789abcdef" * 2
PHONE = "+14155550123"
TWILIO_API = re.compile(
    r"^https://api\.twilio\.com/2010-04-01/Accounts/AC[0-9a-f]{32}/Messages\.json$"
)
# the document requires an 8-character key and a 6 to 32 character secret
VONAGE: dict[str, Any] = {"api_key": "abcd1234", "api_secret": "s3cret-0123", "from_": "Example"}

# a text-only email with no Reply-To, non-ASCII text and no custom header
PLAIN_SENDER = EmailConfig(from_address=SENDER.from_address, from_name="Zoë, Inc.")
PLAIN = Message(channel=Channel.EMAIL, to=TO, subject="Grüße: Ihr Code", text="Code: 493817\nGrüße")
EMAILS = [
    pytest.param(SENDER, MESSAGE, id="html-reply-to-header"),
    pytest.param(PLAIN_SENDER, PLAIN, id="text-only-non-ascii"),
]
SMS = [
    pytest.param(Message(channel=Channel.SMS, to=PHONE, text="Your code is 493817"), id="gsm7"),
    pytest.param(Message(channel=Channel.SMS, to=PHONE, text="Код: 493817 ✅"), id="unicode"),
]


@pytest.fixture(scope="module")
def specs() -> VendorSpecs:
    """The four documents, read and patched once for the module (about half a second)."""
    return load_specs(spec_dir_or_skip())


def host(specs: VendorSpecs, vendor: str, path: str) -> str:
    """The first server the vendor's document names for ``path``."""
    return server_urls(specs.documents[vendor], path)[0]


async def sent_through(
    provider: Callable[[str], Provider],
    message: Message,
    status: int,
    body: bytes = b"",
    **answer: Any,
) -> SentRequest:
    """The one request ``provider(base_url)`` sent to a real local server for ``message``."""
    async with (
        recording_vendor(status, body, **answer) as (base_url, seen),
        provider(base_url) as built,
    ):
        await built.send(message)
    [sent] = seen
    return sent


def assert_conforms(spec: Any, sent: SentRequest) -> None:
    problems = request_problems(spec, sent)
    assert not problems, "\n".join(problems)


# --- the requests otpd sends conform ----------------------------------------------------


@pytest.mark.parametrize(("sender", "message"), EMAILS)
async def test_sendgrid_mail_send_request_conforms_to_the_published_spec(
    specs: VendorSpecs, http: SharedSession, sender: EmailConfig, message: Message
) -> None:
    def provider(base_url: str) -> Provider:
        return SendgridProvider(SendgridConfig(api_key="SG.k", base_url=base_url), sender, http)

    sent = await sent_through(provider, message, 202, headers={"X-Message-Id": "sg-1"})

    assert (sent.method, urlsplit(sent.url).path) == ("POST", "/v3/mail/send")
    assert sent.content_type == "application/json"
    assert_conforms(specs.sendgrid, sent.at(host(specs, "sendgrid", SENDGRID_PATH)))


@pytest.mark.parametrize(("sender", "message"), EMAILS)
async def test_mailgun_messages_request_is_multipart_and_conforms_to_the_published_spec(
    specs: VendorSpecs, http: SharedSession, sender: EmailConfig, message: Message
) -> None:
    def provider(base_url: str) -> Provider:
        config = MailgunConfig(api_key="key-abc", domain=DOMAIN, base_url=base_url)
        return MailgunProvider(config, sender, http)

    reply = json.dumps({"id": "<1@mg.example.org>", "message": "Queued. Thank you."}).encode()
    sent = await sent_through(provider, message, 200, reply)

    assert (sent.method, urlsplit(sent.url).path) == ("POST", f"/v3/{DOMAIN}/messages")
    assert re.fullmatch(r"multipart/form-data; boundary=[0-9a-f]{32}", sent.content_type)
    assert_conforms(specs.mailgun, sent.at(host(specs, "mailgun", MAILGUN_PATH)))


@pytest.mark.parametrize("message", SMS)
async def test_vonage_sms_request_conforms_to_the_published_spec(
    specs: VendorSpecs, http: SharedSession, message: Message
) -> None:
    def provider(base_url: str) -> Provider:
        return VonageProvider(VonageConfig(**VONAGE, base_url=base_url), http)

    reply = {"message-count": "1", "messages": [{"status": "0", "message-id": "0C0000002"}]}
    sent = await sent_through(provider, message, 200, json.dumps(reply).encode())

    assert (sent.method, urlsplit(sent.url).path) == ("POST", "/sms/json")
    assert sent.content_type == "application/x-www-form-urlencoded"
    assert_conforms(specs.vonage, sent.at(host(specs, "vonage", VONAGE_PATH)))


def twilio_configs() -> list[Any]:
    service = "MG" + "1" * 32
    callback = "https://otpd.example.org/twilio/status"
    return [
        pytest.param(
            TwilioConfig(account_sid=SID, auth_token="tok", from_number="+14155550100"),
            id="from-number",
        ),
        pytest.param(
            TwilioConfig(
                account_sid=SID,
                auth_token="tok",
                messaging_service_sid=service,
                status_callback=callback,
            ),
            id="messaging-service-and-callback",
        ),
    ]


async def sent_by_the_twilio_sdk(
    config: TwilioConfig, http: SharedSession, message: Message
) -> SentRequest:
    """The request the SDK's ``create_async`` made through otpd's provider, as aiohttp
    would write it: the form encoded by aiohttp's ``FormData``, the ``auth`` it was given
    as the ``Authorization`` header."""
    seen: list[SentRequest] = []

    async def record(url: Any, **kwargs: Any) -> CallbackResult:
        headers = dict(kwargs.get("headers") or {})
        auth = kwargs.get("auth")
        if isinstance(auth, aiohttp.BasicAuth):
            headers["Authorization"] = auth.encode()
        payload = aiohttp.FormData(kwargs.get("data") or {})()
        headers.setdefault("Content-Type", payload.content_type)
        seen.append(SentRequest("POST", str(url), headers, await payload.as_bytes()))
        reply = {"sid": "SM" + "f" * 32, "status": "queued", "to": PHONE, "account_sid": SID}
        return CallbackResult(status=201, payload=reply)

    async with TwilioProvider(config, http) as provider:
        with aioresponses() as mocked:
            mocked.post(TWILIO_API, callback=record)
            await provider.send(message)
    [sent] = seen
    return sent


@pytest.mark.parametrize("config", twilio_configs())
@pytest.mark.parametrize("message", SMS)
async def test_twilio_create_message_request_conforms_to_the_published_spec(
    specs: VendorSpecs, http: SharedSession, config: TwilioConfig, message: Message
) -> None:
    sent = await sent_by_the_twilio_sdk(config, http, message)

    assert sent.url == f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    assert sent.content_type == "application/x-www-form-urlencoded"
    assert_conforms(specs.twilio, sent)


def test_otpds_default_endpoints_are_servers_the_specs_name(specs: VendorSpecs) -> None:
    sendgrid = server_urls(specs.documents["sendgrid"], SENDGRID_PATH)
    mailgun = server_urls(specs.documents["mailgun"], MAILGUN_PATH)
    twilio = server_urls(specs.documents["twilio"], TWILIO_PATH)
    vonage = server_urls(specs.documents["vonage"], VONAGE_PATH)

    assert SendgridConfig(api_key="k").base_url in sendgrid
    for region in ("us", "eu"):
        config = MailgunConfig(api_key="k", domain=DOMAIN, region=region)
        assert config.effective_base_url in mailgun
    assert TwilioProvider(TwilioConfig(account_sid=SID), SharedSession()).base_url in twilio
    assert VonageConfig().base_url in vonage


# --- the canned answers the provider tests use are what the vendors document -----------


def test_the_canned_success_answers_match_the_specs(specs: VendorSpecs) -> None:
    def at(vendor: str, path: str, concrete: str) -> SentRequest:
        return SentRequest("POST", host(specs, vendor, path) + concrete, {}, b"")

    sendgrid = at("sendgrid", SENDGRID_PATH, SENDGRID_PATH)
    mailgun = at("mailgun", MAILGUN_PATH, f"/v3/{DOMAIN}/messages")
    twilio = at("twilio", TWILIO_PATH, f"/2010-04-01/Accounts/{SID}/Messages.json")
    vonage = at("vonage", VONAGE_PATH, "/sms/json")
    created = {"sid": "SM" + "f" * 32, "status": "queued", "to": PHONE, "account_sid": SID}
    queued = {"id": "<20261122.1@mg.example.org>", "message": "Queued. Thank you."}
    parts = {
        "message-count": "2",
        "messages": [
            {"to": "14155550123", "status": "0", "message-id": "0C0000002100"},
            {"to": "14155550123", "status": "6", "error-text": "Unroutable"},
        ],
    }

    assert response_problems(specs.sendgrid, sendgrid, 202, content_type="") == []
    assert response_problems(specs.mailgun, mailgun, 200, json.dumps(queued).encode()) == []
    assert response_problems(specs.twilio, twilio, 201, json.dumps(created).encode()) == []
    # without the oneOf -> anyOf patch every 200 answer would fail: it matches both schemas
    assert response_problems(specs.vonage, vonage, 200, json.dumps(parts).encode()) == []


# --- broken requests fail the same check ------------------------------------------------

Breaker = Callable[[VendorSpecs], Awaitable[tuple[Any, SentRequest]]]


async def sendgrid_without_from(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    provider = SendgridProvider(SendgridConfig(api_key="SG.k"), SENDER, SharedSession())
    body = provider.payload(MESSAGE)
    del body["from"]
    url = host(specs, "sendgrid", SENDGRID_PATH) + SENDGRID_PATH
    return specs.sendgrid, json_request(url, body, {"Authorization": "Bearer SG.k"})


async def sendgrid_with_tracking_as_a_string(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    provider = SendgridProvider(SendgridConfig(api_key="SG.k"), SENDER, SharedSession())
    body = provider.payload(MESSAGE)
    body["tracking_settings"]["click_tracking"]["enable"] = "false"
    url = host(specs, "sendgrid", SENDGRID_PATH) + SENDGRID_PATH
    return specs.sendgrid, json_request(url, body, {"Authorization": "Bearer SG.k"})


def mailgun_form(specs: VendorSpecs) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    provider = MailgunProvider(MailgunConfig(api_key="k", domain=DOMAIN), SENDER, SharedSession())
    url = host(specs, "mailgun", MAILGUN_PATH) + f"/v3/{DOMAIN}/messages"
    return url, provider.form(MESSAGE), {"Authorization": aiohttp.encode_basic_auth("api", "k")}


async def mailgun_without_to(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    url, fields, headers = mailgun_form(specs)
    fields = [(name, value) for name, value in fields if name != "to"]
    return specs.mailgun, await multipart_request(url, fields, headers)


async def mailgun_urlencoded(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    # what otpd sent before: the document accepts only multipart/form-data
    url, fields, headers = mailgun_form(specs)
    return specs.mailgun, form_request(url, fields, headers)


async def mailgun_tracking_off_misspelled(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    url, fields, headers = mailgun_form(specs)
    fields = [(n, "off" if n == "o:tracking-clicks" else v) for n, v in fields]
    return specs.mailgun, await multipart_request(url, fields, headers)


async def mailgun_without_credentials(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    url, fields, _ = mailgun_form(specs)
    return specs.mailgun, await multipart_request(url, fields, {})


async def twilio_without_to(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    url = host(specs, "twilio", TWILIO_PATH) + f"/2010-04-01/Accounts/{SID}/Messages.json"
    fields = [("From", "+14155550100"), ("Body", "Your code is 493817")]
    headers = {"Authorization": aiohttp.BasicAuth(SID, "tok").encode()}
    return specs.twilio, form_request(url, fields, headers)


async def twilio_with_a_malformed_account(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    url = host(specs, "twilio", TWILIO_PATH) + "/2010-04-01/Accounts/AC123/Messages.json"
    fields = [("To", PHONE), ("From", "+14155550100"), ("Body", "Your code is 493817")]
    headers = {"Authorization": aiohttp.BasicAuth("AC123", "tok").encode()}
    return specs.twilio, form_request(url, fields, headers)


async def vonage_with_a_short_key(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    provider = VonageProvider(VonageConfig(**{**VONAGE, "api_key": "k1"}), SharedSession())
    url = host(specs, "vonage", VONAGE_PATH) + "/sms/json"
    sms = Message(channel=Channel.SMS, to=PHONE, text="Your code is 493817")
    return specs.vonage, form_request(url, provider.form(sms).items(), {})


async def vonage_without_to(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    provider = VonageProvider(VonageConfig(**VONAGE), SharedSession())
    url = host(specs, "vonage", VONAGE_PATH) + "/sms/json"
    sms = Message(channel=Channel.SMS, to=PHONE, text="Your code is 493817")
    fields = [(name, value) for name, value in provider.form(sms).items() if name != "to"]
    return specs.vonage, form_request(url, fields, {})


async def vonage_without_the_sms_prefix(specs: VendorSpecs) -> tuple[Any, SentRequest]:
    # the /sms of the document's server URL belongs to the path: /json alone is not served
    provider = VonageProvider(VonageConfig(**VONAGE), SharedSession())
    sms = Message(channel=Channel.SMS, to=PHONE, text="Your code is 493817")
    url = host(specs, "vonage", VONAGE_PATH) + "/json"
    return specs.vonage, form_request(url, provider.form(sms).items(), {})


@pytest.mark.parametrize(
    ("breaker", "complaint"),
    [
        pytest.param(sendgrid_without_from, "'from' is a required property", id="sendgrid-from"),
        pytest.param(sendgrid_with_tracking_as_a_string, "is not of type 'boolean'", id="sg-bool"),
        pytest.param(mailgun_without_to, "'to' is a required property", id="mailgun-to"),
        pytest.param(mailgun_urlencoded, "x-www-form-urlencoded", id="mailgun-urlencoded"),
        pytest.param(mailgun_tracking_off_misspelled, "'off' is not one of", id="mailgun-enum"),
        pytest.param(mailgun_without_credentials, "Security", id="mailgun-no-auth"),
        pytest.param(twilio_without_to, "'To' is a required property", id="twilio-to"),
        pytest.param(twilio_with_a_malformed_account, "AccountSid", id="twilio-sid"),
        pytest.param(vonage_with_a_short_key, "'k1' is too short", id="vonage-key"),
        pytest.param(vonage_without_to, "'to' is a required property", id="vonage-to"),
        pytest.param(vonage_without_the_sms_prefix, "PathNotFound", id="vonage-no-sms-prefix"),
    ],
)
async def test_a_broken_request_fails_validation(
    specs: VendorSpecs, breaker: Breaker, complaint: str
) -> None:
    spec, sent = await breaker(specs)
    problems = "\n".join(request_problems(spec, sent))
    assert complaint in problems, problems
