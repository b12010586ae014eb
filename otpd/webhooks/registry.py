"""One verifier per provider, built from config; an unconfigured one refuses with 401."""

from __future__ import annotations

from dataclasses import dataclass

from otpd.clock import Clock
from otpd.config import Config
from otpd.store.base import Store
from otpd.webhooks.mailgun import MailgunWebhook
from otpd.webhooks.sendgrid import SendGridWebhook
from otpd.webhooks.twilio import TwilioWebhook

__all__ = ["Webhooks"]


@dataclass(frozen=True, slots=True)
class Webhooks:
    """The verifiers the webhook routes call, by provider name. Owns nothing to close."""

    twilio: TwilioWebhook
    mailgun: MailgunWebhook
    sendgrid: SendGridWebhook
    # ses: SnsWebhook is added by the SES/SNS work (otpd/webhooks/sns.py)

    @classmethod
    def from_config(cls, config: Config, store: Store, clock: Clock) -> Webhooks:
        return cls(
            twilio=TwilioWebhook(
                auth_token=config.twilio.auth_token,
                status_callback=config.twilio.status_callback,
                clock=clock,
            ),
            mailgun=MailgunWebhook(
                signing_key=config.mailgun.webhook_signing_key, store=store, clock=clock
            ),
            sendgrid=SendGridWebhook(public_key=config.sendgrid.webhook_public_key, clock=clock),
        )
