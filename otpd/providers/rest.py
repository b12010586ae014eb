"""What the vendor REST API providers share: the session, body parsing, status mapping."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from otpd.errors import DeliveryError, TransientDeliveryError
from otpd.providers.base import Provider
from otpd.providers.session import SharedSession

__all__ = ["RestProvider", "read_json"]

# Bodies are read to classify them, never stored; a bigger one is not an API answer.
_MAX_BODY = 64 * 1024


async def read_json(response: aiohttp.ClientResponse) -> Any:
    """The decoded JSON body, or ``None`` when it is missing, too big or not JSON."""
    raw = await response.read()
    if not raw or len(raw) > _MAX_BODY:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class RestProvider(Provider):
    """A provider that talks to a vendor's REST API over the daemon's shared session.

    The session is read at send time: providers are built before the daemon opens it.
    """

    def __init__(self, http: SharedSession, base_url: str) -> None:
        super().__init__()
        self._http = http
        self.base_url = base_url.rstrip("/")

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._http.session

    def status_error(self, status: int) -> DeliveryError:
        """The transient error for an HTTP status that says nothing about the recipient.

        4xx answers other than throttling mean our account, key or request is refused by
        this provider; another provider may still deliver, so the chain fails over.
        """
        if status == 429:
            return TransientDeliveryError(f"{self.name} throttled us (429)", reason="throttled")
        if status in (401, 403):
            return TransientDeliveryError(
                f"{self.name} refused our credentials ({status})", reason="provider_auth"
            )
        if status >= 500:
            return TransientDeliveryError(
                f"{self.name} server error ({status})", reason="provider_error"
            )
        # refused this request (400, 404, 422): nothing about the provider's health
        return TransientDeliveryError(
            f"{self.name} rejected the request ({status})",
            reason="provider_rejected",
            blames_provider=False,
        )

    def classify(self, exc: BaseException) -> DeliveryError:
        if isinstance(exc, aiohttp.ClientError) and not isinstance(exc, OSError | TimeoutError):
            # ServerDisconnectedError, payload errors and the like: the connection broke
            return TransientDeliveryError(f"network error ({type(exc).__name__})", reason="network")
        return super().classify(exc)

    async def health(self) -> dict[str, Any]:
        return {"base_url": self.base_url}
