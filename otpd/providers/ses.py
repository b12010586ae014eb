"""Email through Amazon SES (API v2), sent as raw MIME built by :func:`build_email`.

Raw content keeps our From, Reply-To, Subject and custom headers. SES replaces the
Message-ID and Date headers with its own; ours still show in SES notifications that
include the original headers.
"""

from __future__ import annotations

from typing import Any, Self

from otpd.config import Config, EmailConfig, SesConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.aws import AwsProvider
from otpd.providers.base import ProviderDeps
from otpd.providers.mime import build_email

__all__ = ["SesProvider"]

# MessageRejected covers both "this sender may not send" (our configuration, another
# provider may work) and "this recipient is refused" (no provider will do better).
_IDENTITY_HINTS = ("not verified", "authority to send", "not authorized to send")
_RECIPIENT_HINTS = ("address", "recipient", "blacklist", "suppress", "domain", "@")

_TRANSIENT_CODES = {
    "MailFromDomainNotVerifiedException": "ses_mail_from_not_verified",
    "MailFromDomainNotVerified": "ses_mail_from_not_verified",
    "AccountSuspendedException": "ses_account_suspended",
    "AccountSendingPausedException": "ses_sending_paused",
    "SendingPausedException": "ses_sending_paused",
    "ConfigurationSetSendingPausedException": "ses_sending_paused",
    "NotFoundException": "ses_not_found",
    "ConfigurationSetDoesNotExist": "ses_not_found",
}


class SesProvider(AwsProvider):
    """Sends each email with ``sesv2.send_email`` and raw content from ``build_email``."""

    name = "ses"
    channel = Channel.EMAIL
    service = "sesv2"
    label = "SES"

    def __init__(self, config: SesConfig, sender: EmailConfig) -> None:
        super().__init__(
            region=config.region,
            endpoint_url=config.endpoint_url,
            access_key_id=config.access_key_id,
            secret_access_key=config.secret_access_key,
        )
        self.config = config
        self.sender = sender

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.ses, config.email)

    async def _send(self, message: Message) -> SendResult:
        email = build_email(message, self.sender)
        request: dict[str, Any] = {
            "FromEmailAddress": self.sender.from_address,
            # the envelope: only message.to, whatever headers the message carries
            "Destination": {"ToAddresses": [message.to]},
            "Content": {"Raw": {"Data": email.data}},
        }
        if self.config.configuration_set:
            request["ConfigurationSetName"] = self.config.configuration_set
        response = await self.client.send_email(**request)
        return SendResult(self.name, str(response["MessageId"]))

    def vendor_error(self, code: str, text: str) -> DeliveryError | None:
        if code == "MessageRejected":
            if any(hint in text for hint in _IDENTITY_HINTS):
                return TransientDeliveryError(
                    "SES refused the sender identity (MessageRejected)",
                    reason="ses_identity_not_verified",
                )
            if any(hint in text for hint in _RECIPIENT_HINTS):
                return PermanentDeliveryError(
                    "SES rejected the recipient (MessageRejected)",
                    reason="ses_message_rejected",
                )
            # the content is refused: no retry makes it acceptable
            return PermanentDeliveryError(
                "SES rejected the message (MessageRejected)", reason="ses_content_rejected"
            )
        if code in ("InvalidParameterValue", "BadRequestException") and any(
            hint in text for hint in _RECIPIENT_HINTS
        ):
            return PermanentDeliveryError(
                f"SES refused the recipient address ({code})", reason="invalid_recipient"
            )
        if code in _TRANSIENT_CODES:
            return TransientDeliveryError(f"SES: {code}", reason=_TRANSIENT_CODES[code])
        return None
