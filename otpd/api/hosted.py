"""The hosted confirmation page for email verification links (``links.hosted = true``).

``/l/verify-email`` is for people's browsers (no API key): a page whose form POST consumes
the token. A GET never consumes anything, so mail scanners that open every link cannot
burn it. This module owns the path: it tells the link builder where the page is served.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from functools import cache
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from markupsafe import Markup

from otpd.api.middleware import CLOSE_CONNECTION, public
from otpd.api.routes import OTPD
from otpd.app import Otpd
from otpd.config import LinksConfig
from otpd.errors import InvalidTokenError, NotFoundError, ValidationError
from otpd.templating import BUILTIN_TEMPLATES
from otpd.validation import check_locale

__all__ = ["HOSTED_ROUTE", "HOSTED_VERIFY_PATH", "hosted_routes"]

# Where otpd serves its own confirmation page when ``links.hosted`` is on.
HOSTED_VERIFY_PATH = "/l/verify-email"
HOSTED_PAGE = "_hosted/verify_email"
HOSTED_ROUTE = "hosted_verify_email"

hosted_routes = web.RouteTableDef()

log = structlog.get_logger("otpd.api")

# What the page's form sends (a browser's default enctype); nothing else is read.
FORM_TYPES = frozenset({"", "application/x-www-form-urlencoded"})


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


@hosted_routes.get(HOSTED_VERIFY_PATH, name=HOSTED_ROUTE)
@public
async def hosted_verify_page(request: web.Request) -> web.Response:
    """The Confirm page. It reads nothing from the store: opening it changes nothing."""
    otpd = _hosted(request)
    return await _page(request, otpd, request.query.get("token", ""))


async def _page(request: web.Request, otpd: Otpd, token: str) -> web.Response:
    """The page with its Confirm form, or (400) the broken-link page without one."""
    well_formed = otpd.links.is_well_formed(token)
    html = await otpd.renderer.render_page(
        HOSTED_PAGE,
        {
            "token": token if well_formed else "",
            "action": request.path,  # where the app is mounted, prefix included
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


@hosted_routes.post(HOSTED_VERIFY_PATH)
@public
async def hosted_verify_confirm(request: web.Request) -> web.Response:
    """Consume the token from the form, then send the browser on (303) to the configured
    success or failure page; a body that is not the page's form gets the broken-link page
    (400). No CSRF token: the link token is itself the only secret and no cookie or
    session gives a forged POST any authority it would not have anyway."""
    otpd = _hosted(request)
    token = await _form_token(request, otpd)
    if token is None:
        return await _page(request, otpd, "")
    target = otpd.config.links.failure_url
    try:
        await otpd.links.confirm_verification(token)
        target = otpd.config.links.success_url
    except InvalidTokenError:
        pass
    raise web.HTTPSeeOther(
        target, headers=page_headers(otpd.config.links, otpd.config.product.logo_url)
    )


async def _form_token(request: web.Request, otpd: Otpd) -> str | None:
    """The form's ``token`` field ("" when absent), or None for a body that is not the
    page's form: another content type, too large, too slow, undecodable or not UTF-8."""
    if request.content_type not in FORM_TYPES:
        problem = "content type"
    else:
        try:
            async with asyncio.timeout(otpd.config.server.body_timeout_seconds):
                form = await request.post()
        except TimeoutError:
            request[CLOSE_CONNECTION] = True
            problem = "timeout"
        except web.HTTPRequestEntityTooLarge:
            problem = "too large"
        except (RequestPayloadError, HttpProcessingError):
            problem = "undecodable"
        except (UnicodeDecodeError, LookupError):  # not UTF-8, or an unknown charset
            problem = "charset"
        else:
            token = form.get("token", "")
            return token if isinstance(token, str) else None
    log.info("hosted.bad_form", problem=problem)
    return None
