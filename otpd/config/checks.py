"""How config rules are written: each one adds a problem instead of stopping at the first."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import idna

from otpd.errors import ConfigError

__all__ = [
    "Checks",
    "Problem",
    "is_loopback",
    "is_web_url",
    "mailbox",
    "raise_problems",
    "secret",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration: the dotted key and what is wrong with it."""

    key: str
    text: str

    def __str__(self) -> str:
        return f"{self.key}: {self.text}"


def secret() -> Any:
    """A string field that is masked wherever config is shown."""
    return field(default="", metadata={"secret": True})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_URL = 2048
_URL_RE = re.compile(r"https?://[^\s\x00-\x1f\x7f\"'<>`\\]+", re.IGNORECASE)


def is_web_url(value: object, *, allow_http: bool) -> bool:
    """An absolute ``https://`` URL with a host (``http://`` too when ``allow_http``): never
    ``javascript:``, ``data:``, a relative path or anything with spaces or quotes."""
    schemes = ("https://", "http://") if allow_http else ("https://",)
    if not isinstance(value, str) or len(value) > MAX_URL:
        return False
    if not value.lower().startswith(schemes) or _URL_RE.fullmatch(value) is None:
        return False
    try:
        return bool(urlsplit(value).hostname)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        return False


MAX_EMAIL = 254  # RFC 5321's path limit less the angle brackets
# RFC 5322 dot-atom local part, ASCII only (what every relay accepts without SMTPUTF8).
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*")
# A host name label after IDNA: letters, digits, inner hyphens, 1 to 63 characters.
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")


def _ascii_host(domain: str) -> str | None:
    """``domain`` in lower case when it is already a plain host name (ASCII letters,
    digits and inner hyphens, no ``xn--`` form or other hyphens in the 3rd and 4th place):
    what IDNA would make of it, without its tables. None when IDNA must decide."""
    if not domain.isascii():
        return None
    lowered = domain.lower()
    for label in lowered.split("."):
        if label[2:4] == "--" or not _LABEL_RE.fullmatch(label):
            return None
    return lowered


def mailbox(value: str) -> str | None:
    """``value`` as one address otpd can send to, or ``None``: an ASCII dot-atom local part
    of at most 64 characters, a host name domain (internationalised names in their IDNA
    ``xn--`` form, lower case), at most 254 characters in all. No encoded words, quotes,
    comments, control characters or domain literals: RFC 2047 forbids encoded words in an
    address, and nothing else is needed to reach a mailbox."""
    value = value.strip()
    local, sep, domain = value.rpartition("@")
    if not sep or len(local) > 64 or len(value) > 4 * MAX_EMAIL:
        return None
    if not _LOCAL_RE.fullmatch(local) or "=?" in local:
        return None
    ascii_domain = _ascii_host(domain)
    if ascii_domain is None:
        try:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError):
            return None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit() or len(ascii_domain) > 253:
        return None
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    address = f"{local}@{ascii_domain}"
    return address if len(address) <= MAX_EMAIL else None


def raise_problems(problems: Iterable[Problem]) -> None:
    """Raise one :class:`ConfigError` listing every problem, if there are any."""
    found = tuple(dict.fromkeys(problems))  # in order, without repeats
    if found:
        raise ConfigError.from_problems(found)


class Checks:
    """Collects the problems of one section: ``Checks("otp").need(ok, "length", "...")``."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.problems: list[Problem] = []

    def need(self, ok: bool, key: str, text: str) -> None:
        if not ok:
            self.problems.append(Problem(f"{self.section}.{key}" if self.section else key, text))

    def positive(self, value: float, key: str) -> None:
        self.need(value > 0, key, "must be greater than 0")

    def done(self) -> None:
        raise_problems(self.problems)
