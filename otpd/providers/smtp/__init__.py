"""Email over SMTP (aiosmtplib) through a small pool of persistent connections.

:mod:`~otpd.providers.smtp.provider` builds and sends each email,
:mod:`~otpd.providers.smtp.pool` owns the connections to the relay,
:mod:`~otpd.providers.smtp.pipelining` runs one mail transaction (RFC 2920 when offered),
:mod:`~otpd.providers.smtp.tls` builds their TLS context and
:mod:`~otpd.providers.smtp.errors` maps SMTP failures to delivery errors.
"""

from otpd.providers.smtp.errors import classify_smtp_error
from otpd.providers.smtp.pool import SmtpPool
from otpd.providers.smtp.provider import SmtpProvider
from otpd.providers.smtp.tls import make_tls_context

__all__ = ["SmtpPool", "SmtpProvider", "classify_smtp_error", "make_tls_context"]
