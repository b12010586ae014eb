"""The use cases: coroutine APIs that the HTTP layer and embedders call."""

from otpd.services.messages import MessageService
from otpd.services.otp import OtpService
from otpd.services.sms_guard import SmsGuard
from otpd.services.tasks import TaskService
from otpd.services.tokens import TokenService

__all__ = ["MessageService", "OtpService", "SmsGuard", "TaskService", "TokenService"]
