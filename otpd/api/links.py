"""HTTP handlers for email verification and password reset links, and the hosted page.

``/v1/...`` routes speak JSON behind the API key like the rest of v1. ``/l/verify-email``
is for people's browsers (no API key): a page whose form POST consumes the token. A GET
never consumes anything, so mail scanners that open every link cannot burn it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from functools import cache
from urllib.parse import urlsplit

from aiohttp import web
from markupsafe import Markup

from otpd.api.routes import OTPD, json_response, read_body
from otpd.api.schemas import LinkRequestBody, RemindersBody, TokenBody
from otpd.app import Otpd
from otpd.clock import rfc3339
from otpd.config import LinksConfig
from otpd.errors import InvalidTokenError, NotFoundError, ValidationError
from otpd.services.tokens import HOSTED_VERIFY_PATH, LinkIssued, ReminderUser
from otpd.templating import BUILTIN_TEMPLATES
from otpd.validation import check_locale

__all__ = ["link_routes"]

link_routes = web.RouteTableDef()

HOSTED_PAGE = "_hosted/verify_email"


def _issued(issued: LinkIssued) -> web.Response:
    return json_response({"task_id": issued.task_id, "expires_at": rfc3339(issued.expires_at)}, 202)


# ---------------------------------------------------------------------- email verification


@link_routes.post("/v1/email-verifications")
async def request_verification(request: web.Request) -> web.Response:
    body = await read_body(request, LinkRequestBody)
    issued = await request.app[OTPD].links.request_verification(**dataclasses.asdict(body))
    return _issued(issued)


@link_routes.post("/v1/email-verifications/confirm")
async def confirm_verification(request: web.Request) -> web.Response:
    body = await read_body(request, TokenBody)
    owner = await request.app[OTPD].links.confirm_verification(body.token)
    return json_response({"user_id": owner.user_id, "email": owner.email})


@link_routes.post("/v1/email-verifications/reminders")
async def send_reminders(request: web.Request) -> web.Response:
    body = await read_body(request, RemindersBody)
    result = await request.app[OTPD].links.send_reminders(
        [ReminderUser(u.user_id, u.email, u.name) for u in body.users]
    )
    skipped = [{"user_id": s.user_id, "reason": s.reason} for s in result.skipped]
    return json_response({"queued": result.queued, "skipped": skipped}, 202)


# ---------------------------------------------------------------------- password reset


@link_routes.post("/v1/password-resets")
async def request_password_reset(request: web.Request) -> web.Response:
    body = await read_body(request, LinkRequestBody)
    issued = await request.app[OTPD].links.request_password_reset(**dataclasses.asdict(body))
    return _issued(issued)


@link_routes.post("/v1/password-resets/check")
async def check_password_reset(request: web.Request) -> web.Response:
    body = await read_body(request, TokenBody)
    owner = await request.app[OTPD].links.check_password_reset(body.token)
    return json_response(
        {"user_id": owner.user_id, "email": owner.email, "expires_at": rfc3339(owner.expires_at)}
    )


@link_routes.post("/v1/password-resets/confirm")
async def confirm_password_reset(request: web.Request) -> web.Response:
    body = await read_body(request, TokenBody)
    owner = await request.app[OTPD].links.confirm_password_reset(body.token)
    return json_response({"user_id": owner.user_id, "email": owner.email})


# ---------------------------------------------------------------------- hosted page


@cache
def hosted_css() -> str:
    """The hosted page's only style sheet, inlined and allowed by its CSP hash."""
    return (BUILTIN_TEMPLATES / "_hosted" / "page.css").read_text(encoding="utf-8").strip()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@cache
def page_headers(links: LinksConfig, logo_url: str) -> dict[str, str]:
    """Security headers of the hosted page: nothing but its own inline style may load, the
    form may only go to otpd and on to the configured success and failure pages, and no
    URL (holding a token) ever leaves in a Referer header."""
    style = base64.b64encode(hashlib.sha256(hosted_css().encode()).digest()).decode()
    targets = " ".join(sorted({_origin(u) for u in (links.success_url, links.failure_url) if u}))
    img = _origin(logo_url) if logo_url else "'none'"
    csp = (
        f"default-src 'none'; style-src 'sha256-{style}'; img-src {img}; "
        f"form-action 'self' {targets}; frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": " ".join(csp.split()),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "X-Robots-Tag": "noindex, nofollow",
        "Cache-Control": "no-store",
    }


def _hosted(request: web.Request) -> Otpd:
    otpd = request.app[OTPD]
    if not otpd.config.links.hosted:
        raise NotFoundError("not found")
    return otpd


def _accept_language(request: web.Request) -> str | None:
    first = request.headers.get("Accept-Language", "").split(",")[0].split(";")[0].strip()
    try:
        return check_locale(first or None)
    except ValidationError:
        return None


@link_routes.get(HOSTED_VERIFY_PATH)
async def hosted_verify_page(request: web.Request) -> web.Response:
    """The Confirm page. It reads nothing from the store: opening it changes nothing."""
    otpd = _hosted(request)
    token = request.query.get("token", "")
    well_formed = otpd.links.is_well_formed(token)
    html = await otpd.renderer.render_page(
        HOSTED_PAGE,
        {
            "token": token if well_formed else "",
            "action": HOSTED_VERIFY_PATH,
            "failure_url": otpd.config.links.failure_url,
            "style": Markup(hosted_css()),  # noqa: S704 - our own file, hashed in the CSP
        },
        _accept_language(request),
    )
    return web.Response(
        text=html,
        status=200 if well_formed else 400,
        content_type="text/html",
        charset="utf-8",
        headers=page_headers(otpd.config.links, otpd.config.product.logo_url),
    )


@link_routes.post(HOSTED_VERIFY_PATH)
async def hosted_verify_confirm(request: web.Request) -> web.Response:
    """Consume the token from the form, then send the browser on (303) to the configured
    success or failure page. No CSRF token: the link token is itself the only secret and
    no cookie or session gives a forged POST any authority it would not have anyway."""
    otpd = _hosted(request)
    form = await request.post()
    token = form.get("token")
    target = otpd.config.links.failure_url
    if isinstance(token, str):
        try:
            await otpd.links.confirm_verification(token)
            target = otpd.config.links.success_url
        except InvalidTokenError:
            pass
    raise web.HTTPSeeOther(
        target, headers=page_headers(otpd.config.links, otpd.config.product.logo_url)
    )
