"""SMS through Twilio's Programmable Messaging API, with the ``twilio`` package's async client.

The SDK's ``AsyncTwilioHttpClient`` would open its own aiohttp session (default connector,
so DNS goes through whatever ``aiohttp.DefaultResolver`` is: c-ares only if a recent
``aiodns`` happens to be importable, else ``getaddrinfo`` on a thread). It takes no session
or connector argument, but keeps the session in a plain ``session`` attribute and creates
none with ``pool_connections=False``; so we point it at the daemon's shared session, which
resolves names on the event loop with :class:`~otpd.providers.dns.AsyncioResolver`
(dnspython, no threads) and is closed by the daemon, not by us.

The SDK also passes ``timeout=None`` per request when the caller gives none (it ignores its
own ``timeout`` setting), which aiohttp reads as "no timeout at all": each call is bounded
here with :func:`asyncio.timeout` instead.

The SDK has no base URL option: each API is a ``Domain`` whose public ``base_url`` every
request URL is built from, so ``twilio.base_url`` replaces the API domain's. ``TWILIO_EDGE``
and ``TWILIO_REGION``, which the SDK reads from the environment and splices into the host
name, are ignored: an edge or region is a ``twilio.base_url`` like any other, and a spliced
host would turn a mock's ``127.0.0.1:8080`` into nonsense.

The SDK hands aiohttp the credentials as ``auth=BasicAuth(...)``, which aiohttp 3.14
deprecates (both the argument and the class; gone in aiohttp 4): :class:`_Transport` sends
them as an ``Authorization`` header instead (the SDK never logs that header).
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from otpd.config import Config, TwilioConfig
from otpd.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from otpd.models import Channel, Message, SendResult
from otpd.providers.base import ProviderDeps
from otpd.providers.rest import RestProvider
from otpd.providers.session import SharedSession

__all__ = ["TwilioProvider"]

# Error codes about the recipient: no other provider should try, and retrying is useless.
_PERMANENT: dict[int, tuple[str, str]] = {
    # https://www.twilio.com/docs/api/errors/21211 Invalid 'To' Phone Number: not a valid
    # phone number or not in E.164 format
    21211: ("invalid_recipient", "invalid 'To' number"),
    # https://www.twilio.com/docs/api/errors/21610 Attempt to send to unsubscribed recipient:
    # the recipient replied STOP; sending through another provider would ignore that opt-out
    21610: ("recipient_unsubscribed", "the recipient has opted out (STOP)"),
    # https://www.twilio.com/docs/api/errors/21614 'To' number is not a valid mobile number:
    # a landline or an invalid number
    21614: ("recipient_not_mobile", "the 'To' number is not a mobile number"),
}
# Error codes about our Twilio account or sender, not the recipient: fail over.
_TRANSIENT: dict[int, tuple[str, str]] = {
    # https://twilio.com/docs/api/errors/20003 Permission Denied: wrong SID/token, suspended
    20003: ("provider_auth", "authentication failed"),
    # https://www.twilio.com/docs/api/errors/20429 Too many requests: "never processed and
    # is always safe to retry"
    20429: ("throttled", "too many requests"),
    # https://www.twilio.com/docs/api/errors/21408 Message blocked: permissions disabled for
    # the destination region. Our account's Messaging Geo Permissions (or Twilio's coverage)
    # exclude the destination; another provider may reach it.
    21408: ("region_not_enabled", "destination region not enabled for this account"),
    # https://www.twilio.com/docs/api/errors/21612 Message cannot be sent with the current
    # combination of "To" and/or "From" parameters: the causes Twilio lists are sender-ID
    # rules, network restrictions on our sender type and destinations Twilio has no route
    # to, i.e. about our sender and Twilio's routes, which another provider may not share.
    21612: ("route_unavailable", "no route for this To/From combination"),
}


class _Transport(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio has no type hints
    """The SDK's aiohttp client, with no session of its own and the credentials sent as an
    ``Authorization`` header rather than aiohttp's deprecated ``auth=``."""

    def __init__(self) -> None:
        super().__init__(pool_connections=False)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        if auth is not None:
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        return await super().request(method, url, headers=headers, auth=None, **kwargs)


class TwilioProvider(RestProvider):
    """Creates one Message resource per SMS. ``max_retries`` is never set: the SDK would
    then retry POSTs on 5xx and could send an SMS twice; retries belong to the dispatcher."""

    name = "twilio"
    channel = Channel.SMS

    def __init__(self, config: TwilioConfig, http: SharedSession, *, timeout: float = 15.0) -> None:
        super().__init__(http, config.base_url)
        self._config = config
        self._timeout = timeout
        self._transport: _Transport | None = None
        self._client: Client | None = None

    @classmethod
    def from_config(cls, config: Config, deps: ProviderDeps) -> Self:
        return cls(config.twilio, deps.http)

    async def open(self) -> None:
        self._transport = _Transport()
        client = Client(
            self._config.account_sid, self._config.auth_token, http_client=self._transport
        )
        client.edge = client.region = None
        client.api.base_url = self.base_url
        self._client = client

    async def aclose(self) -> None:
        if self._transport is not None:
            # the session is the daemon's: detach it so nothing here can close it
            self._transport.session = None
        self._transport = self._client = None

    def params(self, message: Message) -> dict[str, str]:
        """The keyword arguments of ``messages.create_async`` for ``message``."""
        params = {"to": message.to, "body": message.text}
        if self._config.from_number:
            params["from_"] = self._config.from_number
        else:
            params["messaging_service_sid"] = self._config.messaging_service_sid
        if self._config.status_callback:
            params["status_callback"] = self._config.status_callback
        return params

    async def _send(self, message: Message) -> SendResult:
        if self._client is None or self._transport is None:
            raise RuntimeError("the twilio provider is not open")
        self._transport.session = self.session
        async with asyncio.timeout(self._timeout):
            created = await self._client.messages.create_async(**self.params(message))
        return SendResult(self.name, str(created.sid or ""))

    def classify(self, exc: BaseException) -> DeliveryError:
        if isinstance(exc, TwilioRestException | TwilioServiceException):
            return self.rejection(exc.status, exc.code)
        return super().classify(exc)

    def rejection(self, status: Any, code: Any) -> DeliveryError:
        """Classify a Twilio API error by its error code, then by its HTTP status.

        Only the numbers are used: Twilio's messages quote the recipient's number.
        """
        code = code if isinstance(code, int) else None
        status = status if isinstance(status, int) else 0
        if code in _PERMANENT:
            reason, what = _PERMANENT[code]
            return PermanentDeliveryError(f"twilio error {code}: {what}", reason=reason)
        if code in _TRANSIENT:
            reason, what = _TRANSIENT[code]
            # a region or route closed to this destination says nothing of other messages
            return TransientDeliveryError(
                f"twilio error {code}: {what}",
                reason=reason,
                blames_provider=reason not in ("region_not_enabled", "route_unavailable"),
            )
        error = self.status_error(status)
        if code is not None and code != status:
            error = TransientDeliveryError(
                f"{error.message}, twilio error {code}",
                reason=error.reason,
                blames_provider=error.blames_provider,
            )
        return error

    async def health(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "open": self._client is not None}
