"""One verifier per provider, built from config; an unconfigured one refuses with 401."""

from __future__ import annotations

from dataclasses import dataclass

from otpd.clock import Clock
from otpd.config import Config
from otpd.providers.session import SharedSession
from otpd.store.base import Store
from otpd.webhooks.mailgun import MailgunWebhook
from otpd.webhooks.sendgrid import SendGridWebhook
from otpd.webhooks.sns import SnsWebhook
from otpd.webhooks.twilio import TwilioWebhook
from otpd.webhooks.vonage import VonageWebhook

__all__ = ["Webhooks"]


@dataclass(frozen=True, slots=True)
class Webhooks:
    """The verifiers the webhook routes call, by provider name. Owns nothing to close."""

    twilio: TwilioWebhook
    mailgun: MailgunWebhook
    sendgrid: SendGridWebhook
    vonage: VonageWebhook
    ses: SnsWebhook

    @classmethod
    def from_config(
        cls, config: Config, store: Store, clock: Clock, http: SharedSession
    ) -> Webhooks:
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
            ses=SnsWebhook(config=config.webhooks, http=http, clock=clock),
            vonage=VonageWebhook(
                signature_secret=config.vonage.signature_secret,
                method=config.vonage.signature_method,
                store=store,
                clock=clock,
            ),
        )
