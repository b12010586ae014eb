"""SMS through Amazon SNS ``Publish`` to a phone number, marked transactional."""

from __future__ import annotations

from typing import Any, Self

from otpd.config import Config, SnsConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.aws import AwsProvider
from otpd.providers.base import ProviderDeps

__all__ = ["SnsProvider"]

_INVALID_PARAMETER_CODES = frozenset({"InvalidParameter", "InvalidParameterValue"})


class SnsProvider(AwsProvider):
    """Publishes each SMS directly to ``PhoneNumber`` (no topic), as a transactional SMS
    with the configured sender ID."""

    name = "sns"
    channel = Channel.SMS
    service = "sns"
    label = "SNS"

    def __init__(self, config: SnsConfig) -> None:
        super().__init__(
            region=config.region,
            endpoint_url=config.endpoint_url,
            access_key_id=config.access_key_id,
            secret_access_key=config.secret_access_key,
        )
        self.config = config
        attributes: dict[str, dict[str, str]] = {
            # transactional: higher delivery priority than promotional, as OTPs need
            "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
        }
        if config.sender_id:
            attributes["AWS.SNS.SMS.SenderID"] = {
                "DataType": "String",
                "StringValue": config.sender_id,
            }
        self.attributes = attributes

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.sns)

    async def _send(self, message: Message) -> SendResult:
        response: dict[str, Any] = await self.client.publish(
            PhoneNumber=message.to, Message=message.text, MessageAttributes=self.attributes
        )
        return SendResult(self.name, str(response["MessageId"]))

    def vendor_error(self, code: str, text: str) -> DeliveryError | None:
        if code in _INVALID_PARAMETER_CODES:
            if "opted out" in text or "opted-out" in text:
                return PermanentDeliveryError(
                    f"SNS: the number has opted out ({code})", reason="opted_out"
                )
            if "phone" in text:
                return PermanentDeliveryError(
                    f"SNS refused the phone number ({code})", reason="invalid_recipient"
                )
            return TransientDeliveryError(
                f"SNS refused a parameter ({code})",
                reason="sns_invalid_parameter",
                blames_provider=False,
            )
        if code == "KMSThrottling":
            return TransientDeliveryError("SNS throttled (KMSThrottling)", reason="throttled")
        if code.startswith("KMS"):
            return TransientDeliveryError(f"SNS: {code}", reason="sns_kms")
        return None
