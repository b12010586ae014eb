"""A stand-in for SNS: an https server (certificate from a trustme CA) that serves a
self-made signing certificate and answers subscription confirmations, and messages
signed the way SNS signs them."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from otpd.webhooks.sns import MESSAGE_TYPE_HEADER

TOPIC = "arn:aws:sns:us-east-1:123456789012:otpd-ses"
OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-else"
SES_ID = "010001812345abcd-11111111-2222-3333-4444-555555555555-000000"
CERT_NAME = "SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
NOT_BEFORE = datetime(2026, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2027, 6, 1, tzinfo=UTC)  # FakeClock starts in January 2027

SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


SIGNING_PEM = _self_signed(SIGNING_KEY)


CERT_PATTERN = r"^https://127\.0\.0\.1:\d+/SimpleNotificationService-[a-f0-9]+\.pem$"
SUBSCRIBE_PATTERN = r"^https://127\.0\.0\.1:\d+/\?Action=ConfirmSubscription&[^\s#]*$"


@dataclass
class SnsServer:
    """The https server standing in for SNS: the paths it was asked for, in order."""

    base: str
    requests: list[str] = field(default_factory=list)

    def count(self, prefix: str) -> int:
        return sum(1 for r in self.requests if r.startswith(prefix))


@asynccontextmanager
async def serve_sns(ca: trustme.CA) -> AsyncIterator[SnsServer]:
    """The server on a free port of 127.0.0.1, its certificate issued by ``ca``."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(tls)
    server = SnsServer(base="")

    async def cert(request: web.Request) -> web.Response:
        server.requests.append(request.path_qs)
        if request.match_info["name"] != CERT_NAME:
            raise web.HTTPNotFound()
        await asyncio.sleep(0.05)  # long enough for concurrent requests to overlap
        return web.Response(body=SIGNING_PEM, content_type="application/x-pem-file")

    async def confirm(request: web.Request) -> web.Response:
        server.requests.append(request.path_qs)
        return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")

    app = web.Application()
    app.router.add_get("/{name}", cert)
    app.router.add_get("/", confirm)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        server.base = f"https://127.0.0.1:{runner.addresses[0][1]}"
        yield server
    finally:
        await runner.cleanup()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def string_to_sign(message: dict[str, Any]) -> bytes:
    """Written out from AWS's documentation, independently of the code under test."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def sign(
    message: dict[str, Any],
    server: SnsServer,
    *,
    version: str = "2",
    key: rsa.RSAPrivateKey = SIGNING_KEY,
) -> dict[str, Any]:
    signed = {
        "SignatureVersion": version,
        "SigningCertURL": f"{server.base}/{CERT_NAME}",
        **message,
    }
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 (SNS v1)
    signature = key.sign(string_to_sign(signed), padding.PKCS1v15(), algorithm)
    signed["Signature"] = base64.b64encode(signature).decode()
    return signed


def notification(ses_event: dict[str, Any], sent_at: float, **extra: Any) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": json.dumps(ses_event),
        "Timestamp": iso(sent_at),
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        **extra,
    }


def ses(
    kind: str, detail: dict[str, Any] | None = None, *, key: str = "eventType"
) -> dict[str, Any]:
    event: dict[str, Any] = {
        key: kind,
        "mail": {"timestamp": "2027-01-15T08:00:00.000Z", "messageId": SES_ID},
    }
    if detail is not None:
        event[kind.lower()] = detail
    return event


def body(message: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    return {MESSAGE_TYPE_HEADER: message["Type"]}, json.dumps(message).encode()


def confirmation(server: SnsServer, sent_at: float, topic: str = TOPIC) -> dict[str, Any]:
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92",
        "TopicArn": topic,
        "Message": f"You have chosen to subscribe to the topic {topic}.",
        "SubscribeURL": f"{server.base}/?Action=ConfirmSubscription&TopicArn={topic}&Token=2336",
        "Timestamp": iso(sent_at),
    }
