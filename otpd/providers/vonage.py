"""SMS through Vonage's SMS API (``POST /sms/json``, the former Nexmo API)."""

from __future__ import annotations

from typing import Self

from otpd.config import Config, VonageConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import ProviderDeps
from otpd.providers.rest import RestProvider, read_json
from otpd.providers.session import SharedSession

__all__ = ["VonageProvider", "is_gsm7"]

# GSM 03.38: the default alphabet and its extension table (sent as escape + char).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

# The SMS API answers HTTP 200 and puts the outcome in ``messages[].status``. Meanings from
# https://developer.vonage.com/en/api-errors/sms and
# https://developer.vonage.com/en/messaging/sms/guides/troubleshooting-sms
# Only statuses about the recipient or the message are permanent; everything about our
# account, credentials, sender or request lets the chain fail over to another provider.
_PERMANENT: dict[str, tuple[str, str]] = {
    # 6 Invalid Message: "unable to process this message, for example, an un-recognized
    #   number prefix"
    "6": ("unroutable", "the destination cannot be routed"),
    # 7 Number Barred: the destination "is blacklisted and may not receive them"
    "7": ("recipient_barred", "the destination number is barred"),
    # 12 Message Too Long: "The message length exceeds the maximum allowed"
    "12": ("message_too_long", "the message is too long"),
    # 33 Number De-activated: the destination number is de-activated
    "33": ("recipient_deactivated", "the destination number is de-activated"),
}
_TRANSIENT: dict[str, tuple[str, str]] = {
    # 1 Throttled: "sending SMS faster than the account limit"
    "1": ("throttled", "throttled"),
    # 2 Missing Parameters / 3 Invalid Parameters: our request
    "2": ("provider_rejected", "missing parameters"),
    "3": ("provider_rejected", "invalid parameters"),
    # 4 Invalid Credentials: "API key and/or secret are incorrect, invalid or disabled"
    "4": ("provider_auth", "invalid credentials"),
    # 5 Internal Error: "An error has occurred in the platform"
    "5": ("provider_error", "internal error"),
    # 8 Partner Account Barred: "Your Vonage account has been suspended"
    "8": ("provider_account", "account barred"),
    # 9 Partner Quota Violation: "You do not have sufficient credit"
    "9": ("provider_quota", "quota exceeded"),
    # 10 Too Many Existing Binds: "Back-off and retry"
    "10": ("throttled", "too many binds"),
    # 11 Account Not Enabled For HTTP: "not provisioned for the SMS API"
    "11": ("provider_account", "account not enabled for HTTP"),
    # 14 Invalid Signature
    "14": ("provider_auth", "invalid signature"),
    # 15 Invalid Sender Address: "a non-authorized sender ID in the from field"
    "15": ("provider_rejected", "sender not allowed"),
    # 29 Non-Whitelisted Destination: a trial account may only send to listed numbers
    "29": ("provider_account", "destination not whitelisted for this account"),
}


def is_gsm7(text: str) -> bool:
    """Whether ``text`` fits the GSM 7-bit alphabet (else it must be sent as unicode)."""
    return all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in text)


class VonageProvider(RestProvider):
    """Sends one SMS per request; credentials travel in the form, as the API wants."""

    name = "vonage"
    channel = Channel.SMS

    def __init__(self, config: VonageConfig, http: SharedSession) -> None:
        super().__init__(http, config.base_url)
        self._config = config

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.vonage, deps.http)

    def form(self, message: Message) -> dict[str, str]:
        """The form fields of the request for ``message``."""
        fields = {
            "api_key": self._config.api_key,
            "api_secret": self._config.api_secret,
            "from": self._config.from_,
            "to": message.to.removeprefix("+"),
            "text": message.text,
        }
        if not is_gsm7(message.text):
            fields["type"] = "unicode"
        return fields

    async def _send(self, message: Message) -> SendResult:
        url = f"{self.base_url}/sms/json"
        async with self.session.post(url, data=self.form(message)) as response:
            body = await read_json(response)
            if response.status != 200:
                raise self.status_error(response.status)
        parts = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
            raise TransientDeliveryError(
                "vonage answered without message statuses", reason="provider_error"
            )
        for part in parts:
            status = str(part.get("status", ""))
            if status != "0":
                raise self.rejection(status)
        # A long text is split into parts, each with an id; the first one names the message.
        return SendResult(self.name, str(parts[0].get("message-id") or ""))

    def rejection(self, status: str) -> DeliveryError:
        """Classify a non-zero ``messages[].status``."""
        status = status if status.isdigit() and len(status) <= 4 else "unknown"
        if status in _PERMANENT:
            reason, what = _PERMANENT[status]
            return PermanentDeliveryError(f"vonage status {status}: {what}", reason=reason)
        reason, what = _TRANSIENT.get(status, ("provider_rejected", "rejected"))
        return TransientDeliveryError(
            f"vonage status {status}: {what}",
            reason=reason,
            blames_provider=reason != "provider_rejected",
        )
