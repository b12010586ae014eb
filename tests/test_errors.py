"""The error tree, and that every module's public names are declared in ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import otpd
from otpd.errors import (
    ConfigError,
    DeliveryError,
    NotFoundError,
    OtpdError,
    PermanentDeliveryError,
    RateLimitedError,
    SmsBlockedError,
    StoreDegradedError,
    TransientDeliveryError,
    ValidationError,
)

EXPORTED_ERRORS = [
    obj
    for name in otpd.__all__
    if inspect.isclass(obj := getattr(otpd, name)) and issubclass(obj, OtpdError)
]


def modules() -> list[ModuleType]:
    """Every module of the package, except ``__main__`` (importing it runs the CLI)."""
    found = [otpd]
    for info in pkgutil.walk_packages(otpd.__path__, prefix="otpd."):
        if info.name.endswith("__main__"):
            continue
        found.append(importlib.import_module(info.name))
    return found


def test_every_error_in_the_tree_is_exported() -> None:
    def subclasses(cls: type[OtpdError]) -> set[type[OtpdError]]:
        out = {cls}
        for sub in cls.__subclasses__():
            if sub.__module__ == "otpd.errors":
                out |= subclasses(sub)
        return out

    assert subclasses(OtpdError) <= set(EXPORTED_ERRORS)


@pytest.mark.parametrize("cls", EXPORTED_ERRORS, ids=lambda c: c.__name__)
def test_error_has_a_snake_case_code_and_an_http_status(cls: type[OtpdError]) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", cls.code), cls.code
    assert isinstance(cls.status, int)
    assert 400 <= cls.status <= 599


def test_api_errors_have_their_documented_statuses() -> None:
    expected = {
        "ValidationError": (422, "validation_error"),
        "UnauthorizedError": (401, "unauthorized"),
        "NotFoundError": (404, "not_found"),
        "InvalidTokenError": (400, "invalid_token"),
        "RateLimitedError": (429, "rate_limited"),
        "UnavailableError": (503, "unavailable"),
    }
    for name, (status, code) in expected.items():
        cls = getattr(otpd, name)
        assert (cls.status, cls.code) == (status, code), name


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in EXPORTED_ERRORS]
    # delivery subclasses share their parent's code on purpose: one API answer for both;
    # so does a store serving from its fallback: to a client it is unavailable all the same
    shared = {TransientDeliveryError, PermanentDeliveryError, StoreDegradedError}
    unique = [c.code for c in EXPORTED_ERRORS if c not in shared]
    assert len(unique) == len(set(unique)), codes


def test_validation_fields_land_in_details() -> None:
    err = ValidationError("bad", fields={"email": "not valid", "phone": "required"})
    assert err.fields == {"email": "not valid", "phone": "required"}
    assert err.details["fields"] == {"email": "not valid", "phone": "required"}
    assert err.message == "bad"
    one = ValidationError.field("code", "4 to 10 digits")
    assert one.details == {"fields": {"code": "4 to 10 digits"}}
    assert "code" in one.message
    assert ValidationError("x", details={"body": "nope"}).details == {"body": "nope"}
    assert isinstance(err, ValueError)


def test_rate_limited_carries_retry_after_and_scope() -> None:
    err = RateLimitedError("slow down", retry_after=17, scope="user_hour")
    assert err.retry_after == 17
    assert err.details["retry_after"] == 17
    assert err.details["scope"] == "user_hour"
    blocked = SmsBlockedError("no", reason="country")
    assert isinstance(blocked, RateLimitedError)
    assert blocked.details["reason"] == "country"
    assert blocked.details["retry_after"] == blocked.retry_after > 0


@pytest.mark.parametrize(
    "cls", [DeliveryError, TransientDeliveryError, PermanentDeliveryError], ids=str
)
def test_delivery_errors_carry_reason_and_provider(cls: type[DeliveryError]) -> None:
    err = cls("refused", reason="smtp_550", provider="smtp")
    assert (err.reason, err.provider) == ("smtp_550", "smtp")
    assert err.details == {"reason": "smtp_550", "provider": "smtp"}
    assert err.permanent is (cls is PermanentDeliveryError)


def test_errors_are_also_builtin_errors() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(NotFoundError, LookupError)


def test_details_are_copied_not_shared() -> None:
    details = {"a": 1}
    err = OtpdError("x", details=details)
    err.details["b"] = 2
    assert details == {"a": 1}


def test_top_level_all_is_complete() -> None:
    public = {
        name
        for name, obj in vars(otpd).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
    }
    assert public <= set(otpd.__all__), sorted(public - set(otpd.__all__))
    for name in otpd.__all__:
        assert hasattr(otpd, name), name
    assert {"Otpd", "load_config", "Config", "OtpdError"} <= set(otpd.__all__)


@pytest.mark.parametrize("module", modules(), ids=lambda m: m.__name__)
def test_module_defines_all_with_existing_names(module: ModuleType) -> None:
    assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
    names = list(module.__all__)
    assert len(names) == len(set(names)), "duplicates in __all__"
    for name in names:
        assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


def test_recipient_suppressed_names_the_field_not_the_address() -> None:
    err = otpd.RecipientSuppressedError("phone")
    assert (err.status, err.code) == (422, "recipient_suppressed")
    assert err.details == {"field": "phone"}
