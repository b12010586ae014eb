"""aiosmtplib, ssl and socket errors -> otpd's transient or permanent delivery errors."""

from __future__ import annotations

import ssl

import aiosmtplib

from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

__all__ = ["classify_smtp_error", "refused_recipients"]


def _reply_class(code: int) -> int:
    return code // 100 if 100 <= code <= 599 else 0


def _coded(
    cls: type[DeliveryError], message: str, reason: str, code: int, *, blames: bool = True
) -> DeliveryError:
    error = cls(message, reason=reason, blames_provider=blames and not cls.permanent)
    error.details["smtp_code"] = code
    return error


def refused_recipients(codes: list[int]) -> DeliveryError:
    """RCPT refused: permanent only when every reply is 5xx (4xx is 'try later')."""
    code = codes[0] if codes else 0
    if codes and all(_reply_class(c) == 5 for c in codes):
        return _coded(
            PermanentDeliveryError,
            f"recipient refused by the SMTP server ({code})",
            "smtp_rcpt_5xx",
            code,
        )
    temp = next((c for c in codes if _reply_class(c) == 4), code)
    return _coded(
        TransientDeliveryError,
        f"recipient temporarily refused by the SMTP server ({temp})",
        "smtp_4xx",
        temp,
        blames=False,  # greylisting or a full mailbox: one recipient's state, not the relay's
    )


# Which SMTP step failed with a 5xx, and whether that refuses the message for good.
# MAIL FROM, AUTH, EHLO and the greeting refuse *us* (configuration, reputation, quota):
# another provider may well deliver, so those fail over.
_STEPS: tuple[tuple[type[aiosmtplib.SMTPResponseException], str, bool], ...] = (
    (aiosmtplib.SMTPRecipientRefused, "rcpt", True),
    (aiosmtplib.SMTPDataError, "data", True),
    (aiosmtplib.SMTPSenderRefused, "mail", False),
    (aiosmtplib.SMTPAuthenticationError, "auth", False),
    (aiosmtplib.SMTPHeloError, "helo", False),
    (aiosmtplib.SMTPConnectResponseError, "greeting", False),
)


def classify_smtp_error(exc: BaseException) -> DeliveryError:
    """Map an aiosmtplib / ssl / socket error to a transient or permanent delivery error.

    Messages carry the reply code and the SMTP step, never the server's reply text (it
    often quotes the recipient address).
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return refused_recipients([r.code for r in exc.recipients])
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
        step, permanent = next(
            ((s, p) for cls, s, p in _STEPS if isinstance(exc, cls)), ("command", False)
        )
        if step == "rcpt":
            return refused_recipients([code])
        if _reply_class(code) == 4:
            return _coded(
                TransientDeliveryError,
                f"SMTP server deferred {step} ({code})",
                "smtp_4xx",
                code,
            )
        if _reply_class(code) == 5:
            cls: type[DeliveryError] = (
                PermanentDeliveryError if permanent else TransientDeliveryError
            )
            verb = "refused the message" if permanent else f"refused {step}"
            return _coded(cls, f"SMTP server {verb} ({code})", f"smtp_{step}_5xx", code)
        return _coded(
            TransientDeliveryError,
            f"unexpected SMTP reply to {step} ({code})",
            "smtp_unexpected_reply",
            code,
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return TransientDeliveryError("SMTP server timed out", reason="timeout")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientDeliveryError(
            "SMTP server closed the connection", reason="smtp_disconnected"
        )
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return TransientDeliveryError("cannot connect to the SMTP server", reason="smtp_connect")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransientDeliveryError(
            "SMTP server certificate verification failed", reason="tls_verify_failed"
        )
    if isinstance(exc, ssl.SSLError):
        return TransientDeliveryError(f"TLS error ({type(exc).__name__})", reason="tls_error")
    if isinstance(exc, TimeoutError):
        return TransientDeliveryError("SMTP server timed out", reason="timeout")
    if isinstance(exc, OSError):
        return TransientDeliveryError(f"network error ({type(exc).__name__})", reason="network")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # e.g. a non-ASCII address and no SMTPUTF8 here: another provider may take it
        return TransientDeliveryError(
            "SMTP server lacks a needed extension",
            reason="smtp_not_supported",
            blames_provider=False,
        )
    if isinstance(exc, aiosmtplib.SMTPException):
        # STARTTLS or AUTH not offered, and the like: the relay is misconfigured
        return TransientDeliveryError(f"SMTP error ({type(exc).__name__})", reason="smtp_error")
    return TransientDeliveryError(f"unexpected {type(exc).__name__}", reason="unexpected")
