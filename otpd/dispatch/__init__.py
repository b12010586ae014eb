"""Background delivery of queued messages."""

from otpd.dispatch.dispatcher import Dispatcher, ShutdownReport
from otpd.dispatch.retry import RetryPolicy

__all__ = ["Dispatcher", "RetryPolicy", "ShutdownReport"]
