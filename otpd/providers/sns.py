"""SMS through Amazon SNS ``Publish`` to a phone number, marked transactional."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from otpd.config import SnsConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.aws import AwsProvider, client_error_parts, common_aws_error

__all__ = ["SnsProvider"]

_INVALID_PARAMETER_CODES = frozenset({"InvalidParameter", "InvalidParameterValue"})


class SnsProvider(AwsProvider):
    """Publishes each SMS directly to ``PhoneNumber`` (no topic), as a transactional SMS
    with the configured sender ID."""

    name = "sns"
    channel = Channel.SMS
    service = "sns"
    config_section = "sns"

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

    async def _send(self, message: Message) -> SendResult:
        response: dict[str, Any] = await self.client.publish(
            PhoneNumber=message.to, Message=message.text, MessageAttributes=self.attributes
        )
        return SendResult(self.name, str(response["MessageId"]))

    def classify(self, exc: BaseException) -> DeliveryError:
        if isinstance(exc, ClientError):
            code, text, _ = client_error_parts(exc)
            text = text.lower()
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
                    f"SNS refused a parameter ({code})", reason="sns_invalid_parameter"
                )
            if code == "KMSThrottling":
                return TransientDeliveryError("SNS throttled (KMSThrottling)", reason="throttled")
            if code.startswith("KMS"):
                return TransientDeliveryError(f"SNS: {code}", reason="sns_kms")
        common = common_aws_error(exc, "SNS")
        if common is not None:
            return common
        if isinstance(exc, ClientError):
            code, _, status = client_error_parts(exc)
            return TransientDeliveryError(
                f"SNS refused the request ({code or 'no code'}, HTTP {status})", reason="sns_error"
            )
        return super().classify(exc)
