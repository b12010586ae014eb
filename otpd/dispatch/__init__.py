"""Background delivery of queued messages: the dispatcher, its queue seam, retries."""

from otpd.dispatch.dispatcher import Admission, Dispatcher, ShutdownReport, new_task_id
from otpd.dispatch.queue import DeliveryQueue, InProcessQueue, Job
from otpd.dispatch.retry import RetryPolicy

__all__ = [
    "Admission",
    "DeliveryQueue",
    "Dispatcher",
    "InProcessQueue",
    "Job",
    "RetryPolicy",
    "ShutdownReport",
    "new_task_id",
]
