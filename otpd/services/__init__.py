"""The use cases: coroutine APIs that the HTTP layer and embedders call."""

from otpd.services.otp import OtpService

__all__ = ["OtpService"]
