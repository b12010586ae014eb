"""Email through SendGrid's v3 Mail Send API (``POST /v3/mail/send``)."""

from __future__ import annotations

import re
from email.utils import make_msgid
from typing import Any, Self

from otpd.config import Config, EmailConfig, SendgridConfig
from otpd.errors import DeliveryError, PermanentDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import ProviderDeps
from otpd.providers.mime import one_line
from otpd.providers.rest import RestProvider, read_json
from otpd.providers.session import SharedSession

__all__ = ["SendgridProvider"]

# A 400 whose error names the recipient's address, e.g. ``personalizations.0.to.0.email``.
_RECIPIENT_FIELD = re.compile(r"personalizations\.\d+\.to(\.\d+(\.email)?)?")


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
        headers = {"Message-ID": make_msgid(domain=domain)}
        for name, value in message.headers:
            headers[one_line(name)] = one_line(value)
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
        if status == 400 and any(
            _RECIPIENT_FIELD.fullmatch(str(error.get("field") or "")) for error in _errors(body)
        ):
            return PermanentDeliveryError(
                "sendgrid refused the recipient address (400)", reason="invalid_recipient"
            )
        return self.status_error(status)


def _errors(body: Any) -> list[dict[str, Any]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
