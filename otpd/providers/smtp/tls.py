"""The client TLS context for the SMTP relay, built once when the pool opens: given none,
aiosmtplib would build one per connection in a worker thread."""

from __future__ import annotations

import ssl

from otpd.config import SmtpConfig
from otpd.errors import ConfigError

__all__ = ["make_tls_context"]


def make_tls_context(config: SmtpConfig) -> ssl.SSLContext:
    """The client TLS context: system trust store plus ``smtp.ca_file``; verification
    (chain and host name) unless ``smtp.verify_certificate`` is false."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.ca_file:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConfigError(
                f"smtp.ca_file: cannot load {config.ca_file!r} ({type(exc).__name__})",
                details={"key": "smtp.ca_file"},
            ) from exc
    if not config.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
