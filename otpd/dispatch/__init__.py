"""Background delivery of queued messages."""

from otpd.dispatch.dispatcher import Dispatcher, ShutdownReport, new_task_id
from otpd.dispatch.limits import SendLimiter
from otpd.dispatch.retry import RetryPolicy

__all__ = ["Dispatcher", "RetryPolicy", "SendLimiter", "ShutdownReport", "new_task_id"]
