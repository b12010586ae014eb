"""Dev delivery into one directory (``outbox.dir``): :class:`OutboxEmailProvider` writes
each email as an ``.eml`` file, :class:`ConsoleSmsProvider` each SMS as a ``.txt`` file
and logs a masked line."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Self

import structlog

from otpd.config import Config, EmailConfig
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import Provider, ProviderDeps
from otpd.providers.mime import build_email
from otpd.redaction import mask_phone

__all__ = ["ConsoleSmsProvider", "OutboxEmailProvider"]

log = structlog.get_logger("otpd.outbox")


def _write(directory: Path, suffix: str, tag: str, data: bytes) -> Path:
    # Small synchronous writes: the daemon runs no threads, and a dev file of a few KiB
    # costs about ten microseconds on the file descriptor alone (twice that through
    # pathlib's buffered file). Written under a temporary name, then renamed, so a reader
    # polling the directory never sees half a file.
    name = f"{time.time_ns()}-{tag}-{secrets.token_hex(4)}{suffix}"
    tmp = f"{directory}/.{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    final = directory / name
    os.replace(tmp, final)
    return final


class _OutboxBase(Provider):
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self.directory = Path(directory)

    async def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    async def health(self) -> dict[str, Any]:
        return {"dir": str(self.directory), "writable": os.access(self.directory, os.W_OK)}


class OutboxEmailProvider(_OutboxBase):
    """Writes each email as an RFC 5322 ``.eml`` file."""

    name = "outbox"
    channel = Channel.EMAIL

    def __init__(self, directory: str | os.PathLike[str], sender: EmailConfig) -> None:
        super().__init__(directory)
        self.sender = sender

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.outbox.dir, config.email)

    async def _send(self, message: Message) -> SendResult:
        email = build_email(message, self.sender)
        path = _write(self.directory, ".eml", message.tag, email.data)
        return SendResult(self.name, path.name)


class ConsoleSmsProvider(_OutboxBase):
    """Writes each SMS as a ``.txt`` file and logs a masked line."""

    name = "console"
    channel = Channel.SMS

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.outbox.dir)

    async def _send(self, message: Message) -> SendResult:
        data = f"To: {message.to}\nTag: {message.tag}\n\n{message.text}\n".encode()
        path = _write(self.directory, ".txt", message.tag, data)
        log.info("sms.console", to=mask_phone(message.to), tag=message.tag, file=path.name)
        return SendResult(self.name, path.name)
