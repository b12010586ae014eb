"""Email through SendGrid's v3 Mail Send API (``POST /v3/mail/send``)."""

from __future__ import annotations

import re
from email.utils import make_msgid
from typing import Any, Self

from otpd.config import Config, EmailConfig, SendgridConfig
from otpd.errors import DeliveryError, PermanentDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import ProviderDeps
from otpd.providers.mime import custom_header_name, one_line
from otpd.providers.rest import RestProvider, read_json
from otpd.providers.session import SharedSession

__all__ = ["SendgridProvider"]

# The field of a 400 error about the recipient's address ("Does not contain a valid
# address"), per https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors.
# ``personalizations.0.to`` itself ("The to parameter is required") means our request
# left the recipient out: our fault, not the address's.
_RECIPIENT_FIELD = re.compile(r"personalizations\.\d+\.to\.\d+\.email")

# Link and open tracking rewrite URLs and add a pixel: a token link must reach the
# recipient as written, so every tracking setting is turned off on every message
# (names per the Mail Send spec, ``tracking_settings``).
_TRACKING_OFF: dict[str, dict[str, bool]] = {
    "click_tracking": {"enable": False, "enable_text": False},
    "open_tracking": {"enable": False},
    "subscription_tracking": {"enable": False},
    "ganalytics": {"enable": False},
}


class SendgridProvider(RestProvider):
    """Sends one message per request; ``202 Accepted`` carries ``X-Message-Id``."""

    name = "sendgrid"
    channel = Channel.EMAIL

    def __init__(self, config: SendgridConfig, sender: EmailConfig, http: SharedSession) -> None:
        super().__init__(http, config.base_url)
        self._headers = {"Authorization": f"Bearer {config.api_key}"}
        self.sender = sender

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.sendgrid, config.email, deps.http)

    def payload(self, message: Message) -> dict[str, Any]:
        """The Mail Send request body for ``message``."""
        domain = self.sender.from_address.rpartition("@")[2]
        # RFC 3834: mail no person wrote, so auto-responders leave it alone
        headers = {"Message-ID": make_msgid(domain=domain), "Auto-Submitted": "auto-generated"}
        for name, value in message.headers:
            headers[custom_header_name(name)] = one_line(value)
        content = [{"type": "text/plain", "value": message.text}]
        if message.html:
            content.append({"type": "text/html", "value": message.html})
        body: dict[str, Any] = {
            "personalizations": [{"to": [{"email": message.to}]}],
            "from": {"email": self.sender.from_address},
            "subject": one_line(message.subject),
            "content": content,
            "headers": headers,
        }
        if self.sender.from_name:
            body["from"]["name"] = one_line(self.sender.from_name)
        if self.sender.reply_to:
            body["reply_to"] = {"email": self.sender.reply_to}
        body["tracking_settings"] = {name: dict(value) for name, value in _TRACKING_OFF.items()}
        return body

    async def _send(self, message: Message) -> SendResult:
        url = f"{self.base_url}/v3/mail/send"
        async with self.session.post(
            url, json=self.payload(message), headers=self._headers
        ) as response:
            if response.status in (200, 202):
                return SendResult(self.name, response.headers.get("X-Message-Id", ""))
            raise self.rejection(response.status, await read_json(response))

    def rejection(self, status: int, body: Any) -> DeliveryError:
        """Classify a non-2xx answer; ``body`` is the decoded JSON error document."""
        # only when every problem is the recipient's address: anything else in the
        # request is ours to fix, and another provider may take the message meanwhile
        if status == 400 and _only_about_the_recipient(body):
            return PermanentDeliveryError(
                "sendgrid refused the recipient address (400)", reason="invalid_recipient"
            )
        return self.status_error(status)


def _only_about_the_recipient(body: Any) -> bool:
    errors = body.get("errors") if isinstance(body, dict) else None
    return (
        isinstance(errors, list)
        and bool(errors)
        and all(
            isinstance(error, dict)
            and _RECIPIENT_FIELD.fullmatch(str(error.get("field") or "")) is not None
            for error in errors
        )
    )
