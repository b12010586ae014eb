"""Helpers shared by the SES and SNS tests."""

from __future__ import annotations

import os
from typing import Any

from botocore.exceptions import ClientError


def os_thread_count() -> int:
    """Threads of this process as the kernel sees them, including native ones (c-ares)."""
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0


def client_error(operation: str, code: str, message: str, status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)
