"""How config rules are written: each one adds a problem instead of stopping at the first."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from otpd.errors import ConfigError

__all__ = ["Checks", "Problem", "is_loopback", "raise_problems", "secret"]


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
