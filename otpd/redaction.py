"""Masking of personal data and removal of secrets, shared by logs and health output."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "REDACTED",
    "SECRET_KEYS",
    "mask_email",
    "mask_phone",
    "masked_url",
    "redact_text",
    "redact_value",
]

REDACTED = "[redacted]"

# Keys whose values are never logged, whatever they hold.
SECRET_KEYS = frozenset(
    {
        "code",
        "otp",
        "token",
        "password",
        "passwd",
        "secret",
        "secret_key",
        "api_key",
        "api_secret",
        "auth_token",
        "authorization",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "code_hash",
        "token_hash",
        "link",
        "url_with_token",
        "body",
        "text",
        "html",
    }
)

# Any run of characters that can stand in a local part, whatever they are (``bo!x``,
# ``jöhn``), so no part of an address survives next to its mask.
_EMAIL_RE = re.compile(r"""([^\s@<>()\[\]{},;:"\\]+)@([\w\-]+(?:\.[\w\-]+)*\.\w{2,63})""")
# Only numbers written with a leading "+" are treated as phones: a loose pattern would eat
# timestamps and ids.
_PHONE_RE = re.compile(r"\+\d[\d ()\-]{6,18}\d")
# Long URL-safe runs (tokens, keys) and any "token=" style query parameters.
_TOKEN_PARAM_RE = re.compile(r"(?i)\b(token|code|key|secret|password)=([^&\s\"']+)")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-=]+")


def mask_email(address: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return REDACTED
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    """``+15551234567`` -> ``+1******4567``: country hint and last four digits only."""
    digits = re.sub(r"\D", "", number)
    if len(digits) < 6:
        return REDACTED
    return f"+{digits[0]}{'*' * (len(digits) - 5)}{digits[-4:]}"


def masked_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``: the URL to show in a
    message, password masked (in the user part and in a ``password`` parameter)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL after all (an unbalanced "[" in the host)
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    # by hand: urlunsplit drops the empty host of unix:///path
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else url
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


# What every pattern above needs somewhere in the text: most log values (ids, names,
# reasons) have none of it, and one scan tells.
_SUSPECT_RE = re.compile(r"[@+=]|(?i:bearer)")


def redact_text(text: str) -> str:
    """Mask emails and phone numbers and drop token-like parameters inside free text."""
    if _SUSPECT_RE.search(text) is None:
        return text
    text = _BEARER_RE.sub("Bearer " + REDACTED, text)
    text = _TOKEN_PARAM_RE.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)


def redact_value(key: str, value: Any) -> Any:
    """Redact one key/value pair recursively."""
    if value is None:
        return None
    if key.lower() in SECRET_KEYS:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value
