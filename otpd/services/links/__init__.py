"""Email verification and password reset links, as one feature.

``tokens`` is the token format, ``urls`` the mailed URLs, ``service`` issuing, checking
and consuming, ``reminders`` the batch of verification reminders.
"""

from otpd.services.links.reminders import (
    MAX_REMINDERS,
    Reminders,
    RemindersQueued,
    ReminderUser,
    Skipped,
)
from otpd.services.links.service import LinkIssued, LinkRequest, LinkService, TokenOwner
from otpd.services.links.tokens import LinkTokens
from otpd.services.links.urls import RESET, VERIFY, LinkUrls

__all__ = [
    "MAX_REMINDERS",
    "RESET",
    "VERIFY",
    "LinkIssued",
    "LinkRequest",
    "LinkService",
    "LinkTokens",
    "LinkUrls",
    "ReminderUser",
    "Reminders",
    "RemindersQueued",
    "Skipped",
    "TokenOwner",
]
