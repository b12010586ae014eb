"""Email through Mailgun's Messages API (``POST /v3/{domain}/messages``)."""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.utils import make_msgid
from typing import Any, Self

import aiohttp

from otpd.config import Config, EmailConfig, MailgunConfig
from otpd.errors import DeliveryError, PermanentDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import ProviderDeps
from otpd.providers.mime import custom_header_name, one_line
from otpd.providers.rest import RestProvider, read_json
from otpd.providers.session import SharedSession

__all__ = ["MailgunProvider"]

# A 400 answers ``{"message": "..."}``. The one about the recipient's address reads
# "'to' parameter is not a valid address. please check documentation" (the spec's 400
# example); every other problem ("from parameter is missing", "to parameter is missing",
# "Need at least one of 'text', 'html' ...", "Send options ... are limited to 16KB") is
# our request's. The recipient is blamed only when the message is that sentence (once or
# repeated) and nothing else.
_BAD_TO = (
    r"""['"]?to['"]? parameter is not a valid address\.?"""
    r"(?:\s*please check documentation\.?)?"
)
_ONLY_BAD_TO = re.compile(rf"\s*{_BAD_TO}(?:(?:\s*[,;\n]\s*|\s+){_BAD_TO})*\s*", re.IGNORECASE)

# Click and open tracking rewrite links and add a pixel: a token link must reach the
# recipient as written (values per the spec's ``o:tracking*`` enums).
_TRACKING_OFF = (("o:tracking", "no"), ("o:tracking-clicks", "no"), ("o:tracking-opens", "no"))


class MailgunProvider(RestProvider):
    """Sends one message per request as a form; ``200`` answers ``{"id", "message"}``."""

    name = "mailgun"
    channel = Channel.EMAIL

    def __init__(self, config: MailgunConfig, sender: EmailConfig, http: SharedSession) -> None:
        super().__init__(http, config.effective_base_url)
        self.domain = config.domain
        # aiohttp 3.14 deprecates BasicAuth objects; the header is the supported way.
        self._headers = {"Authorization": aiohttp.encode_basic_auth("api", config.api_key)}
        self.sender = sender

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.mailgun, config.email, deps.http)

    def form(self, message: Message) -> list[tuple[str, str]]:
        """The form fields of the Messages request for ``message``, in order."""
        local, _, domain = self.sender.from_address.rpartition("@")
        sender = Address(
            display_name=one_line(self.sender.from_name), username=local, domain=domain
        )
        fields = [
            ("from", str(sender)),
            ("to", message.to),
            ("subject", one_line(message.subject)),
            ("text", message.text),
        ]
        if message.html:
            fields.append(("html", message.html))
        if self.sender.reply_to:
            fields.append(("h:Reply-To", self.sender.reply_to))
        fields.append(("h:Message-Id", make_msgid(domain=domain)))
        # RFC 3834: mail no person wrote, so auto-responders leave it alone
        fields.append(("h:Auto-Submitted", "auto-generated"))
        fields += [(f"h:{custom_header_name(n)}", one_line(v)) for n, v in message.headers]
        fields += _TRACKING_OFF
        return fields

    async def _send(self, message: Message) -> SendResult:
        url = f"{self.base_url}/v3/{self.domain}/messages"
        # the spec accepts only multipart/form-data here, with or without files
        form = aiohttp.FormData(self.form(message), default_to_multipart=True)
        async with self.session.post(url, data=form, headers=self._headers) as response:
            body = await read_json(response)
            if response.status == 200:
                message_id = body.get("id") if isinstance(body, dict) else None
                return SendResult(self.name, str(message_id or ""))
            raise self.rejection(response.status, body)

    def rejection(self, status: int, body: Any) -> DeliveryError:
        """Classify a non-200 answer; ``body`` is the decoded JSON error, if any."""
        text = body.get("message") if isinstance(body, dict) else None
        if status == 400 and isinstance(text, str) and _ONLY_BAD_TO.fullmatch(text):
            return PermanentDeliveryError(
                "mailgun refused the recipient address (400)", reason="invalid_recipient"
            )
        return self.status_error(status)

    async def health(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "domain": self.domain}
