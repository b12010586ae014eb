"""A code and its durable task are one step: a full queue refuses the code before anything
is kept, and what the SMS guard counted for it is given back."""

from __future__ import annotations

from datetime import UTC, datetime

from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.errors import UnavailableError
from otpd.models import VerifyReason
from tests.conftest import ConfigFactory

HIGH = 1_000_000


async def test_a_full_queue_refuses_the_code_and_gives_the_sms_budget_back(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    # an api-role daemon has no workers: its stream entries stay, one per partition fits
    config = make_config(
        "redis",
        dispatch={"queue_size": 16, "partitions": 16},
        otp={"per_user_hour": HIGH, "per_user_day": HIGH, "per_ip_hour": HIGH},
        sms={
            "per_recipient_hour": HIGH,
            "prefix_max_numbers": HIGH,
            "global_hour": HIGH,
            "global_day": HIGH,
            "country_hour": HIGH,
            "country_day": HIGH,
            "daily_budget": 100.0,
            "default_price": 0.05,
            "conversion_min_samples": 0,
        },
    )
    async with Otpd(config, clock=clock, role="api") as daemon:
        issued, refused = [], []
        for n in range(17):  # 16 partitions of one entry each: one of these must be refused
            try:
                await daemon.otp.issue(user_id=f"u{n}", channel="sms", phone="+14155552671")
            except UnavailableError:
                refused.append(f"u{n}")
            else:
                issued.append(f"u{n}")
        assert refused and len(issued) + len(refused) == 17
        # nothing of a refused code is kept: no code to check against
        for user, kept in [(u, True) for u in issued] + [(u, False) for u in refused]:
            result = await daemon.otp.verify(user_id=user, code="000000")
            assert result.reason is (
                VerifyReason.INVALID_CODE if kept else VerifyReason.NO_ACTIVE_CODE
            )
        counter = f"sms_spend:{datetime.fromtimestamp(clock.time(), UTC).date().isoformat()}"
        _, spent = await daemon.store.capped_add(counter, 0, 100_000_000, 60)
        assert spent == len(issued) * 50_000  # millionths: refused codes were refunded
