"""HTTP handlers for TOTP (authenticator apps) and recovery codes, behind the API key like
the rest of v1. The bodies are parsed by the one strict parser of :mod:`otpd.api.schemas`."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from otpd import validation as v
from otpd.api.routes import OTPD, json_response, read_body
from otpd.api.schemas import as_kwargs
from otpd.clock import rfc3339
from otpd.services.totp import MAX_ACCOUNT_NAME

__all__ = [
    "TotpCodeBody",
    "TotpConfirmBody",
    "TotpDeleteBody",
    "TotpEnrollBody",
    "TotpUserBody",
    "totp_routes",
]

totp_routes = web.RouteTableDef()


def _max(n: int) -> dict[str, int]:
    return {"max_len": n}


@dataclass(frozen=True, slots=True)
class TotpEnrollBody:
    user_id: str = field(metadata=_max(v.MAX_USER_ID))
    account_name: str = field(metadata=_max(MAX_ACCOUNT_NAME))


@dataclass(frozen=True, slots=True)
class TotpConfirmBody:
    user_id: str = field(metadata=_max(v.MAX_USER_ID))
    code: str = field(metadata=_max(v.MAX_CODE))
    email: str | None = field(default=None, metadata=_max(v.MAX_EMAIL))
    locale: str | None = field(default=None, metadata=_max(v.MAX_LOCALE))


@dataclass(frozen=True, slots=True)
class TotpCodeBody:
    """A TOTP code or a recovery code to check."""

    user_id: str = field(metadata=_max(v.MAX_USER_ID))
    code: str = field(metadata=_max(32))
    client_ip: str | None = field(default=None, metadata=_max(v.MAX_CLIENT_IP))
    user_agent: str | None = field(default=None, metadata=_max(v.MAX_USER_AGENT))


@dataclass(frozen=True, slots=True)
class TotpUserBody:
    user_id: str = field(metadata=_max(v.MAX_USER_ID))


@dataclass(frozen=True, slots=True)
class TotpDeleteBody:
    """The optional body of ``DELETE /v1/totp/{user_id}``: where to send the notice."""

    email: str | None = field(default=None, metadata=_max(v.MAX_EMAIL))
    locale: str | None = field(default=None, metadata=_max(v.MAX_LOCALE))


@totp_routes.post("/v1/totp/enrollments")
async def enroll(request: web.Request) -> web.Response:
    body = await read_body(request, TotpEnrollBody)
    started = await request.app[OTPD].totp.enroll(**as_kwargs(body))
    return json_response(
        {
            "secret": started.secret,
            "otpauth_uri": started.otpauth_uri,
            "qr_svg": started.qr_svg,
            "expires_at": rfc3339(started.expires_at),
        },
        status=201,
    )


@totp_routes.post("/v1/totp/enrollments/confirm")
async def confirm(request: web.Request) -> web.Response:
    body = await read_body(request, TotpConfirmBody)
    confirmed = await request.app[OTPD].totp.confirm(**as_kwargs(body))
    if confirmed.enabled:
        return json_response({"enabled": True, "recovery_codes": list(confirmed.recovery_codes)})
    return json_response({"enabled": False, "reason": confirmed.reason})


@totp_routes.post("/v1/totp/verify")
async def verify(request: web.Request) -> web.Response:
    body = await read_body(request, TotpCodeBody)
    result = await request.app[OTPD].totp.verify(**as_kwargs(body))
    if result.verified:
        return json_response({"verified": True})
    return json_response({"verified": False, "reason": result.reason})


@totp_routes.post("/v1/recovery-codes/verify")
async def verify_recovery_code(request: web.Request) -> web.Response:
    body = await read_body(request, TotpCodeBody)
    result = await request.app[OTPD].totp.verify_recovery(**as_kwargs(body))
    if result.verified:
        return json_response({"verified": True, "remaining": result.remaining})
    return json_response({"verified": False, "reason": result.reason})


@totp_routes.post("/v1/recovery-codes/regenerate")
async def regenerate_recovery_codes(request: web.Request) -> web.Response:
    body = await read_body(request, TotpUserBody)
    codes = await request.app[OTPD].totp.regenerate(user_id=body.user_id)
    return json_response({"recovery_codes": list(codes)})


@totp_routes.delete("/v1/totp/{user_id}")
async def delete(request: web.Request) -> web.Response:
    body = TotpDeleteBody()
    if request.can_read_body:
        body = await read_body(request, TotpDeleteBody)
    await request.app[OTPD].totp.delete(user_id=request.match_info["user_id"], **as_kwargs(body))
    return web.Response(status=204)
