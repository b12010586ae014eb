"""The use cases: coroutine APIs that the HTTP layer and embedders call.

``otp`` (codes), ``links/`` (verification and reset links), ``messages`` (generic
sends), ``sms_guard`` (fraud and cost rules), ``tasks`` (task reads), ``limits`` (every
rate limit and what its refusal means), ``audit`` (the audit trail), ``deps`` (what
services are built with).
"""

from otpd.services.audit import AuditTrail
from otpd.services.deps import ServiceDeps
from otpd.services.limits import LimitPolicy, SendingLimits
from otpd.services.links import LinkService, Reminders
from otpd.services.messages import MessageService
from otpd.services.otp import OtpService
from otpd.services.sms_guard import SmsGuard
from otpd.services.tasks import TaskService

__all__ = [
    "AuditTrail",
    "LimitPolicy",
    "LinkService",
    "MessageService",
    "OtpService",
    "Reminders",
    "SendingLimits",
    "ServiceDeps",
    "SmsGuard",
    "TaskService",
]
