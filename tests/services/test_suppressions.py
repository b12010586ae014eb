"""The suppression list on both stores: normalised entries, one round trip per check, and
a trail that names the recipient masked only."""

from __future__ import annotations

import pytest

from otpd.clock import FakeClock
from otpd.crypto import Hasher
from otpd.errors import RecipientSuppressedError, ValidationError
from otpd.services.audit import AuditTrail
from otpd.services.suppressions import SuppressionList
from otpd.store import Store
from tests.conftest import TEST_SECRET, ConfigFactory
from tests.store.conftest import WrappedStore

EMAIL = "Ada.Lovelace@Example.com"
MOBILE = "+491701234567"


def suppressions(store: Store, clock: FakeClock, make_config: ConfigFactory) -> SuppressionList:
    config = make_config("memory")
    audit = AuditTrail(config.audit, store, clock=clock)
    return SuppressionList(store, Hasher(TEST_SECRET.encode()), clock, audit)


async def test_an_entry_is_found_under_any_spelling_and_lifted_once(
    store: Store, clock: FakeClock, make_config: ConfigFactory
) -> None:
    supp = suppressions(store, clock, make_config)
    added = await supp.add(EMAIL, "bounce", source="webhook")
    assert (added.display, added.reason, added.source, added.since) == (
        "a***@example.com",
        "bounce",
        "webhook",
        clock.time(),
    )
    assert await supp.get("ada.lovelace@example.com") == added
    assert await supp.is_suppressed(" ADA.LOVELACE@EXAMPLE.COM ".strip()) == added
    assert await supp.get("other@example.com") is None
    assert await supp.remove(EMAIL.lower()) is True
    assert await supp.remove(EMAIL) is False
    assert await supp.get(EMAIL) is None
    events, _ = await supp.audit.events(event="recipient_suppressed")
    [removed], _ = await supp.audit.events(event="suppression_removed")
    assert [(e["recipient"], e["reason"], e["source"]) for e in events] == [
        ("a***@example.com", "bounce", "webhook")
    ]
    assert removed["recipient"] == "a***@example.com"


async def test_a_check_of_two_addresses_is_one_store_call_and_names_the_field(
    store: Store, clock: FakeClock, make_config: ConfigFactory
) -> None:
    wrapped = WrappedStore(store)
    supp = suppressions(wrapped, clock, make_config)
    await supp.add(MOBILE, "opt_out", source="webhook")
    wrapped.calls = 0
    with pytest.raises(RecipientSuppressedError) as caught:
        await supp.check({"email": EMAIL, "phone": MOBILE})
    assert wrapped.calls == 1
    assert caught.value.details == {"field": "phone"}
    assert MOBILE not in str(caught.value)
    await supp.check({"email": EMAIL})
    await supp.check({})
    assert wrapped.calls == 2


async def test_bad_addresses_and_reasons_are_refused_and_never_suppressed(
    store: Store, clock: FakeClock, make_config: ConfigFactory
) -> None:
    supp = suppressions(store, clock, make_config)
    for address in ("nobody", "01701234567", "+1"):
        with pytest.raises(ValidationError):
            await supp.add(address, "manual")
        assert await supp.is_suppressed(address) is None
    for reason in ("", "x" * 65, "line\nbreak"):
        with pytest.raises(ValidationError):
            await supp.add(EMAIL, reason)
    with pytest.raises(ValueError, match="source"):
        await supp.add(EMAIL, "manual", source="elsewhere")
    assert await supp.get(EMAIL) is None
