"""Validation and normalisation of user-supplied values, shared by every service.

Services call these (not the HTTP layer) so embedders get the same checks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumberType

from otpd.config.checks import MAX_EMAIL, is_web_url, mailbox
from otpd.errors import ValidationError

__all__ = [
    "MAX_CLIENT_IP",
    "MAX_CODE",
    "MAX_EMAIL",
    "MAX_EMAIL_TEXT",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_LOCALE",
    "MAX_NAME",
    "MAX_PHONE",
    "MAX_PURPOSE",
    "MAX_SMS_TEXT",
    "MAX_SUBJECT",
    "MAX_TEMPLATE",
    "MAX_USER_AGENT",
    "MAX_USER_ID",
    "check_client_ip",
    "check_code",
    "check_display_name",
    "check_locale",
    "check_purpose",
    "check_template_urls",
    "check_url",
    "check_user_agent",
    "check_user_id",
    "e164",
    "normalize_email",
    "normalize_phone",
    "parse_phone",
]

# Every length rule, stated once: the request schemas bound raw input with the same numbers.
MAX_USER_ID = 128
MAX_PURPOSE = 32
MAX_LOCALE = 16
MAX_CLIENT_IP = 64  # an IPv6 address with a zone index stays well below
MAX_USER_AGENT = 512
MAX_NAME = 128
MAX_PHONE = 32  # E.164 is at most 15 digits; room for spaces and dashes
MAX_CODE = 10
MAX_TEMPLATE = 64
MAX_SUBJECT = 998  # RFC 5322's line limit
MAX_EMAIL_TEXT = 100_000
MAX_SMS_TEXT = 1600  # the longest concatenated SMS the vendors accept
MAX_IDEMPOTENCY_KEY = 255

_USER_ID_RE = re.compile(rf"[A-Za-z0-9._:@+\-=|/]{{1,{MAX_USER_ID}}}")
_PURPOSE_RE = re.compile(rf"[a-z0-9_\-]{{1,{MAX_PURPOSE}}}")
_LOCALE_RE = re.compile(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?")
_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


def check_user_id(value: str, field: str = "user_id") -> str:
    if not _USER_ID_RE.fullmatch(value):
        raise ValidationError.field(field, f"1 to {MAX_USER_ID} letters, digits or ._:@+-=|/")
    return value


def check_code(value: str, field: str = "code") -> str:
    """An OTP code as typed: 4 to ``MAX_CODE`` ASCII digits."""
    if not (4 <= len(value) <= MAX_CODE and value.isascii() and value.isdigit()):
        raise ValidationError.field(field, f"4 to {MAX_CODE} digits")
    return value


def check_purpose(value: str, field: str = "purpose") -> str:
    if not _PURPOSE_RE.fullmatch(value):
        raise ValidationError.field(field, "1 to 32 lowercase letters, digits, _ or -")
    return value


def check_locale(value: str | None, field: str = "locale") -> str | None:
    if value is None:
        return None
    if not _LOCALE_RE.fullmatch(value):
        raise ValidationError.field(field, "a language tag such as en or pt-BR")
    return value.replace("_", "-")


def check_client_ip(value: str | None, field: str = "client_ip") -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValidationError.field(field, "not an IPv4 or IPv6 address") from None


def check_display_name(value: str | None, field: str = "name") -> str | None:
    """A person's name for a greeting: trimmed, at most 128 printable characters."""
    if value is None:
        return None
    value = " ".join(value.split())
    if len(value) > MAX_NAME or not value.isprintable():
        raise ValidationError.field(field, f"at most {MAX_NAME} printable characters")
    return value or None


def check_user_agent(value: str | None, field: str = "user_agent") -> str | None:
    if value is None:
        return None
    if len(value) > MAX_USER_AGENT or not value.isprintable():
        raise ValidationError.field(field, f"at most {MAX_USER_AGENT} printable characters")
    return value


# Context values under these names end up in an ``href`` or ``src``: they are URLs.
_URL_KEY_RE = re.compile(r"(?:url|link|[a-z0-9_]*_(?:url|link))")


def check_url(value: object, field: str, *, allow_http: bool) -> str:
    """An absolute web URL (see :func:`otpd.config.checks.is_web_url`), or a 422."""
    if not is_web_url(value, allow_http=allow_http):
        wanted = "an absolute https:// URL" + (" (or http:// in dev)" if allow_http else "")
        raise ValidationError.field(field, f"must be {wanted}")
    assert isinstance(value, str)
    return value


def check_template_urls(context: Mapping[str, Any], *, allow_http: bool) -> None:
    """Refuse a template context whose URL-typed values (``link``, ``*_url``) are not
    absolute web URLs: context is data, never a link target an attacker picks."""
    for key, value in context.items():
        if _URL_KEY_RE.fullmatch(key) and value != "":  # "" is no link at all
            check_url(value, f"context.{key}", allow_http=allow_http)


def normalize_email(value: str, field: str = "email") -> str:
    """One address otpd can send to (see :func:`otpd.config.checks.mailbox`), or a 422."""
    address = mailbox(value)
    if address is None:
        raise ValidationError.field(field, "not a valid email address")
    return address


def parse_phone(value: str, field: str = "phone") -> phonenumbers.PhoneNumber:
    if not value.startswith("+"):
        raise ValidationError.field(
            field, "must be in E.164 form, starting with + and a country code"
        )
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValidationError.field(field, "not a phone number in E.164 form") from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError.field(field, "not a valid phone number")
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise ValidationError.field(field, "not a mobile number that can receive SMS")
    return number


def e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_phone(value: str, field: str = "phone") -> str:
    """The number in E.164 (``+15417543010``) if it is a valid mobile-capable number."""
    return e164(parse_phone(value, field))
