"""SES events delivered by Amazon SNS HTTP(S) subscriptions.

Every message is checked before anything is fetched (listed topic, age, certificate and
confirmation URLs fully matching the configured patterns), then its SNS signature
(``SignatureVersion`` 1: SHA1withRSA, 2: SHA256withRSA, PKCS#1 v1.5) against the signing
certificate, fetched once per URL and cached. Subscriptions to a listed topic are
confirmed; SES delivery, bounce and complaint events become delivery events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from yarl import URL

from otpd.clock import Clock
from otpd.config import WebhooksConfig
from otpd.errors import ConfigError, UnavailableError, ValidationError
from otpd.providers.session import SharedSession
from otpd.webhooks.events import DeliveryEvent, DeliveryOutcome, WebhookRefusedError

__all__ = ["MESSAGE_TYPE_HEADER", "SnsWebhook", "canonical_string"]

log = structlog.get_logger("otpd.webhooks.sns")

MESSAGE_TYPE_HEADER = "x-amz-sns-message-type"
_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_SIGNED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION,
    "UnsubscribeConfirmation": _CONFIRMATION,
}
_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_FUTURE_SKEW = 300
"""Seconds an SNS Timestamp may be ahead of the clock."""
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
_MAX_FETCH_BYTES = 16 * 1024
_CACHE_SIZE = 32
_MAX_RECIPIENTS = 50
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{0,31}")
_SMTP_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def canonical_string(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signs: ``Name\\nvalue\\n`` for each of the message type's fields in
    the documented order, ``Subject`` only when the message has one."""
    fields = _SIGNED_FIELDS[message["Type"]]
    parts = [
        f"{name}\n{message[name]}\n"
        for name in fields
        if name != "Subject" or message.get("Subject") is not None
    ]
    return "".join(parts).encode()


@dataclass(frozen=True, slots=True)
class _Certificate:
    key: rsa.RSAPublicKey
    not_before: float
    not_after: float


def _tls_context(ca_file: str) -> ssl.SSLContext | bool:
    """``ca_file``'s CAs instead of the system's, or True: the session's own check."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ConfigError(
            f"webhooks.sns_ca_file: cannot load {ca_file!r} ({type(exc).__name__})",
            details={"key": "webhooks.sns_ca_file"},
        ) from exc


class SnsWebhook:
    """Verifies SNS messages for the configured topics and maps the SES events they carry.

    Certificates are fetched with the shared session (https only, no redirects, 5 s,
    16 KiB) from a URL that fully matches ``webhooks.sns_cert_url_pattern``, and cached by
    URL (the 32 most recent, each until its ``not_valid_after``); concurrent requests for
    one uncached URL share one fetch.
    """

    def __init__(self, *, config: WebhooksConfig, http: SharedSession, clock: Clock) -> None:
        self._topics = frozenset(config.sns_topic_arns)
        self._cert_url = re.compile(config.sns_cert_url_pattern)
        self._subscribe_url = re.compile(config.sns_subscribe_url_pattern)
        self._max_age = config.sns_max_age_seconds
        self._ssl = _tls_context(config.sns_ca_file)
        self._http = http
        self._clock = clock
        self._certs: OrderedDict[str, _Certificate] = OrderedDict()
        self._fetching: dict[str, asyncio.Future[_Certificate]] = {}

    async def events(self, headers: Mapping[str, str], raw_body: bytes) -> list[DeliveryEvent]:
        if not self._topics:
            raise WebhookRefusedError("ses webhooks are not configured")
        message = _message(raw_body)
        kind = message["Type"]
        if headers.get(MESSAGE_TYPE_HEADER) != kind:
            raise WebhookRefusedError(f"{MESSAGE_TYPE_HEADER} does not match the signed Type")
        if message["TopicArn"] not in self._topics:
            raise WebhookRefusedError("the topic is not one of webhooks.sns_topic_arns")
        algorithm = _HASHES.get(message["SignatureVersion"])
        if algorithm is None:
            raise WebhookRefusedError("SignatureVersion must be 1 or 2")
        sent_at = _instant(message["Timestamp"])
        if sent_at is None:
            raise ValidationError.field("Timestamp", "must be an ISO 8601 time with a zone")
        now = self._clock.time()
        if now - sent_at > self._max_age or sent_at - now > _FUTURE_SKEW:
            raise WebhookRefusedError("signature is stale")
        cert_url = message["SigningCertURL"]
        if not _allowed(self._cert_url, cert_url):
            raise WebhookRefusedError("SigningCertURL is not an allowed SNS certificate URL")
        if kind == "SubscriptionConfirmation" and not _allowed(
            self._subscribe_url, message["SubscribeURL"]
        ):
            raise WebhookRefusedError("SubscribeURL is not an allowed SNS URL")
        try:
            signature = base64.b64decode(message["Signature"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WebhookRefusedError("signature is missing or wrong") from exc
        key = await self._public_key(cert_url)
        try:
            key.verify(signature, canonical_string(message), padding.PKCS1v15(), algorithm())
        except InvalidSignature as exc:
            raise WebhookRefusedError("signature is missing or wrong") from exc
        if kind == "SubscriptionConfirmation":
            await self._confirm(message["SubscribeURL"], message["TopicArn"])
            return []
        if kind == "UnsubscribeConfirmation":
            return []  # the operator unsubscribed on purpose: nothing to undo
        return _ses_events(message["MessageId"], message["Message"], sent_at)

    async def _public_key(self, url: str) -> rsa.RSAPublicKey:
        now = self._clock.time()
        cert = self._certs.get(url)
        if cert is not None and now > cert.not_after:
            del self._certs[url]
            cert = None
        if cert is not None:
            self._certs.move_to_end(url)
        elif (pending := self._fetching.get(url)) is not None:
            # shielded: a waiter that goes away must not cancel the others' fetch
            cert = await asyncio.shield(pending)
        else:
            cert = await self._fetch_shared(url)
        if not cert.not_before <= now <= cert.not_after:
            raise WebhookRefusedError("the signing certificate is not valid now")
        return cert.key

    async def _fetch_shared(self, url: str) -> _Certificate:
        pending: asyncio.Future[_Certificate] = asyncio.get_running_loop().create_future()
        self._fetching[url] = pending
        try:
            cert = await self._fetch(url)
        except BaseException as exc:
            shared = exc if isinstance(exc, WebhookRefusedError | UnavailableError) else None
            pending.set_exception(shared or UnavailableError("SNS certificate fetch failed"))
            pending.exception()  # retrieved: nobody may be waiting
            raise
        else:
            pending.set_result(cert)
            self._certs[url] = cert
            while len(self._certs) > _CACHE_SIZE:
                self._certs.popitem(last=False)
            return cert
        finally:
            del self._fetching[url]

    async def _fetch(self, url: str) -> _Certificate:
        status, data = await self._get(url, "the SNS signing certificate")
        if status != 200:
            raise UnavailableError(f"the SNS signing certificate answered HTTP {status}")
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise WebhookRefusedError("the signing certificate is unreadable") from exc
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookRefusedError("the signing certificate has no RSA key")
        return _Certificate(
            key, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        )

    async def _confirm(self, url: str, topic: str) -> None:
        status, _ = await self._get(url, "the SNS subscription confirmation")
        if status != 200:
            raise UnavailableError(f"SNS answered the subscription confirmation with {status}")
        log.info("webhook.sns_subscription_confirmed", topic=topic)

    async def _get(self, url: str, what: str) -> tuple[int, bytes]:
        """GET an allowed URL: https, no redirects, bounded in time and size."""
        try:
            async with self._http.session.get(
                URL(url), ssl=self._ssl, allow_redirects=False, timeout=_FETCH_TIMEOUT
            ) as resp:
                if (resp.content_length or 0) > _MAX_FETCH_BYTES:
                    raise WebhookRefusedError(f"{what} is too large")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(4096):
                    data += chunk
                    if len(data) > _MAX_FETCH_BYTES:
                        raise WebhookRefusedError(f"{what} is too large")
                return resp.status, bytes(data)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UnavailableError(f"{what} could not be fetched") from exc


def _allowed(pattern: re.Pattern[str], url: str) -> bool:
    """``url`` fully matches ``pattern`` and is an https URL with a host and no user info
    (the second check guards against a loose pattern)."""
    if pattern.fullmatch(url) is None:
        return False
    try:
        parsed = URL(url)
    except ValueError:
        return False
    return parsed.scheme == "https" and bool(parsed.host) and parsed.user is None


def _message(raw_body: bytes) -> dict[str, str]:
    """The SNS message: a JSON object whose signed fields and signature are strings."""
    try:
        body = json.loads(raw_body)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise ValidationError.field("body", "must be an SNS message (a JSON object)")
    kind = body.get("Type")
    if not isinstance(kind, str) or kind not in _SIGNED_FIELDS:
        raise ValidationError.field("Type", f"must be one of {sorted(_SIGNED_FIELDS)}")
    required = [f for f in _SIGNED_FIELDS[kind] if f != "Subject"]
    required += ["SignatureVersion", "Signature", "SigningCertURL"]
    missing = [f for f in required if not isinstance(body.get(f), str)]
    if missing:
        raise ValidationError.field(missing[0], "must be a string")
    subject = body.get("Subject")
    if subject is not None and not isinstance(subject, str):
        raise ValidationError.field("Subject", "must be a string")
    return body


def _instant(value: Any) -> float | None:
    """An ISO 8601 time with a zone as UNIX seconds, or None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
        return None if moment.tzinfo is None else moment.timestamp()
    except (ValueError, OverflowError):
        return None


def _word(value: Any, default: str) -> str:
    return value if isinstance(value, str) and _WORD.fullmatch(value) else default


def _ses_events(sns_id: str, text: str, sent_at: float) -> list[DeliveryEvent]:
    """The delivery events of one SES event (event publishing's ``eventType`` or an
    identity notification's ``notificationType``); others (Send, Open, Reject...) give none."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict):
        raise ValidationError.field("Message", "must be an SES event (a JSON object)")
    kind = event.get("eventType", event.get("notificationType"))
    if not isinstance(kind, str) or kind not in ("Delivery", "Bounce", "Complaint"):
        return []
    mail = event.get("mail")
    message_id = mail.get("messageId") if isinstance(mail, dict) else None
    detail = event.get(kind.lower())
    if not (isinstance(message_id, str) and message_id and isinstance(detail, dict)):
        raise ValidationError.field("Message", f"mail.messageId and {kind.lower()} are required")
    occurred = _instant(detail.get("timestamp")) or sent_at
    if kind == "Delivery":
        return [DeliveryEvent("ses", message_id, sns_id, DeliveryOutcome.DELIVERED, occurred)]
    if kind == "Complaint":
        outcome, permanent = DeliveryOutcome.COMPLAINED, True
        reason = _word(detail.get("complaintFeedbackType"), "complaint")
        listed = detail.get("complainedRecipients")
    else:
        bounce_type = _word(detail.get("bounceType"), "Undetermined")
        # SES gave up on a Transient (or Undetermined) bounce too, but the address may work
        # tomorrow: the task is undelivered, the recipient not suppressed
        permanent = bounce_type == "Permanent"
        outcome = DeliveryOutcome.BOUNCED if permanent else DeliveryOutcome.UNDELIVERED
        reason = f"{bounce_type}/{_word(detail.get('bounceSubType'), 'Undetermined')}"
        listed = detail.get("bouncedRecipients")
    entries = [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []
    entries = entries[:_MAX_RECIPIENTS] or [{}]
    events = []
    for i, entry in enumerate(entries):
        address, status = entry.get("emailAddress"), entry.get("status")
        code = f" {status}" if isinstance(status, str) and _SMTP_STATUS.fullmatch(status) else ""
        events.append(
            DeliveryEvent(
                provider="ses",
                message_id=message_id,
                event_id=sns_id if len(entries) == 1 else f"{sns_id}#{i}",
                outcome=outcome,
                occurred_at=occurred,
                # the diagnostic text may quote the address: never kept
                reason=reason + code,
                permanent=permanent,
                recipient=address if isinstance(address, str) else "",
            )
        )
    return events
