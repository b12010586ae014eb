"""The dev outbox read back (``otpd outbox latest``), and the trace of refusals kept in it.

The dev providers write one file per message into ``outbox.dir``: ``<ns>-<tag>-<hex>.eml``
for an email, ``.txt`` for an SMS. A message that a limit refused is never written, so
:class:`OutboxRefusals` appends one line for it to ``refused.jsonl`` in the same
directory: the newest entry for an address is then the refusal, not an older message
whose code or link is stale.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from otpd.config import Config
from otpd.models import Channel, Message

__all__ = [
    "REFUSALS_FILE",
    "OutboxEntry",
    "OutboxRefusals",
    "dev_outbox_refusals",
    "find_code",
    "find_link",
    "latest",
]

log = structlog.get_logger("otpd.outbox")

REFUSALS_FILE = "refused.jsonl"

_LINK = re.compile(r"https?://[^\s<>\"']+?[?&]token=[A-Za-z0-9._~-]+")


def dev_outbox_refusals(config: Config) -> OutboxRefusals | None:
    """The refusal trace for a dev daemon that writes a dev outbox; ``None`` otherwise."""
    uses_outbox = "outbox" in config.email.providers or "console" in config.sms.providers
    if config.server.env != "dev" or not uses_outbox:
        return None
    return OutboxRefusals(config.outbox.dir)


class OutboxRefusals:
    """Appends one JSON line per refused message to ``<dir>/refused.jsonl``.

    Each line is one ``write`` on a descriptor opened for appending (a few microseconds,
    so a refusal costs about what it did before), and a reader never sees half a line.
    The file is opened at the first refusal; a failure to write is logged once.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / REFUSALS_FILE
        self._fd: int | None = None
        self._failed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def refused(self, message: Message, reason: str) -> None:
        entry = {
            "at_ns": time.time_ns(),  # the clock of the outbox file names
            "channel": message.channel.value,
            "to": message.to,
            "tag": message.tag,
            "reason": reason,
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                self._fd = os.open(self.path, flags, 0o600)
            os.write(self._fd, line.encode())
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("outbox.refusal_not_written", file=str(self.path), error=str(exc))


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One message in the dev outbox, sent (``path`` set) or refused (``refused`` set)."""

    at_ns: int
    channel: Channel
    to: str
    tag: str
    subject: str = ""
    text: str = ""
    refused: str = ""
    path: Path | None = None


def _address(to: str) -> str:
    """How two spellings of an address compare: emails case-insensitively, numbers by
    their digits (``+1 415 555-2671`` is ``+14155552671``)."""
    to = to.strip()
    if "@" in to:
        return to.casefold()
    return "+" + re.sub(r"\D", "", to)


def _when(path: Path) -> int:
    head = path.name.partition("-")[0]
    return int(head) if head.isdigit() else path.stat().st_mtime_ns


def _read_message(path: Path) -> OutboxEntry | None:
    data = path.read_bytes()
    tag = path.stem.partition("-")[2].rpartition("-")[0]
    if path.suffix == ".txt":
        head, _, body = data.decode(errors="replace").partition("\n\n")
        headers = dict(line.partition(": ")[::2] for line in head.splitlines())
        return OutboxEntry(
            _when(path),
            Channel.SMS,
            headers.get("To", ""),
            headers.get("Tag", tag),
            text=body.rstrip("\n"),
            path=path,
        )
    msg = email.message_from_bytes(data, policy=email.policy.default)
    if not isinstance(msg, EmailMessage):
        return None
    part = msg.get_body(preferencelist=("plain", "html"))
    text = part.get_content() if isinstance(part, EmailMessage) else ""
    return OutboxEntry(
        _when(path),
        Channel.EMAIL,
        parseaddr(str(msg.get("To", "")))[1],
        tag,
        subject=str(msg.get("Subject", "")),
        text=str(text).strip("\n"),
        path=path,
    )


def _newest_sent(directory: Path, address: str) -> OutboxEntry | None:
    files = [
        p
        for p in directory.iterdir()
        if p.suffix in (".eml", ".txt") and not p.name.startswith(".") and p.is_file()
    ]
    for path in sorted(files, key=_when, reverse=True):
        entry = _read_message(path)
        if entry is not None and _address(entry.to) == address:
            return entry
    return None


def _newest_refused(directory: Path, address: str) -> OutboxEntry | None:
    try:
        lines = (directory / REFUSALS_FILE).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            raw = json.loads(line)
            entry = OutboxEntry(
                int(raw["at_ns"]),
                Channel(raw["channel"]),
                str(raw["to"]),
                str(raw["tag"]),
                refused=str(raw["reason"]) or "refused",
            )
        except (ValueError, KeyError, TypeError):
            continue  # a line still being written, or not one of ours
        if _address(entry.to) == address:
            return entry
    return None


def latest(directory: str | os.PathLike[str], to: str) -> OutboxEntry | None:
    """The newest message to ``to`` in the outbox at ``directory``, sent or refused."""
    folder = Path(directory)
    if not folder.is_dir():
        return None
    address = _address(to)
    found = [e for e in (_newest_sent(folder, address), _newest_refused(folder, address)) if e]
    return max(found, key=lambda e: e.at_ns, default=None)


def find_code(entry: OutboxEntry, length: int) -> str | None:
    """The ``length``-digit code of an OTP message (in the subject first, then the text)."""
    pattern = re.compile(rf"(?<!\d)\d{{{length}}}(?!\d)")
    for text in (entry.subject, entry.text):
        match = pattern.search(text)
        if match:
            return match.group(0)
    return None


def find_link(entry: OutboxEntry) -> str | None:
    """The link carrying a token in a verification or reset email."""
    match = _LINK.search(entry.text)
    return match.group(0) if match else None
