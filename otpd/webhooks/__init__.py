"""Provider webhooks: each module verifies one provider's signature and turns its events
into :class:`~otpd.webhooks.events.DeliveryEvent` values; nothing here touches the store."""

from otpd.webhooks.events import DeliveryEvent, DeliveryOutcome, EventSink, WebhookRefusedError

__all__ = ["DeliveryEvent", "DeliveryOutcome", "EventSink", "WebhookRefusedError"]
