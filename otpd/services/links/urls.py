"""The URLs mailed for link tokens: the caller's own front end, or otpd's hosted page.

Where otpd serves its hosted page is the HTTP layer's business: it tells this builder
(:meth:`LinkUrls.serve_hosted_page`) when it mounts the page.
"""

from __future__ import annotations

from urllib.parse import quote

from otpd.config import LinksConfig
from otpd.errors import UnavailableError

__all__ = ["RESET", "VERIFY", "LinkUrls"]

VERIFY = "email_verification"
RESET = "password_reset"


class LinkUrls:
    def __init__(self, config: LinksConfig) -> None:
        self.config = config
        self.hosted_verify_path: str | None = None

    def serve_hosted_page(self, path: str) -> None:
        """Mailed verification links point at ``path`` when ``links.hosted`` is on."""
        self.hosted_verify_path = path

    def link(self, purpose: str, token: str) -> str:
        """The URL mailed for ``token``."""
        if purpose == VERIFY:
            path = self.config.verify_email_path
            if self.config.hosted:
                if self.hosted_verify_path is None:
                    raise UnavailableError("links.hosted is on but no HTTP API serves the page")
                path = self.hosted_verify_path
        else:
            path = self.config.reset_password_path
        sep = "&" if "?" in path else "?"
        return f"{self.config.base_url.rstrip('/')}{path}{sep}token={quote(token, safe='')}"
