"""Validation and normalisation of user-supplied values, shared by every service.

Services call these (not the HTTP layer) so embedders get the same checks.
"""

from __future__ import annotations

import ipaddress
import re

import phonenumbers
from phonenumbers import PhoneNumberType

from otpd.errors import ValidationError

__all__ = [
    "check_client_ip",
    "check_display_name",
    "check_locale",
    "check_purpose",
    "check_user_agent",
    "check_user_id",
    "e164",
    "normalize_email",
    "normalize_phone",
    "parse_phone",
]

_USER_ID_RE = re.compile(r"[A-Za-z0-9._:@+\-=|/]{1,128}")
_PURPOSE_RE = re.compile(r"[a-z0-9_\-]{1,32}")
_LOCALE_RE = re.compile(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?")
# Pragmatic address check: one @, no spaces or control characters, a dotted domain.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?"
)
_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


def check_user_id(value: str, field: str = "user_id") -> str:
    if not _USER_ID_RE.fullmatch(value):
        raise ValidationError.field(field, "1 to 128 letters, digits or ._:@+-=|/")
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
    if len(value) > 128 or not value.isprintable():
        raise ValidationError.field(field, "at most 128 printable characters")
    return value or None


def check_user_agent(value: str | None, field: str = "user_agent") -> str | None:
    if value is None:
        return None
    if len(value) > 512 or not value.isprintable():
        raise ValidationError.field(field, "at most 512 printable characters")
    return value


def normalize_email(value: str, field: str = "email") -> str:
    """Trimmed, with the domain lower-cased; rejects anything that is not one address."""
    value = value.strip()
    if len(value) > 254 or not _EMAIL_RE.fullmatch(value) or "." not in value.rpartition("@")[2]:
        raise ValidationError.field(field, "not a valid email address")
    local, _, domain = value.rpartition("@")
    if local.startswith(".") or local.endswith(".") or ".." in value:
        raise ValidationError.field(field, "not a valid email address")
    return f"{local}@{domain.lower()}"


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
