"""What the SES and SNS providers share: one aiobotocore client kept open for the daemon's
life, DNS resolved without threads, and one error classification around each service's own
table (the botocore errors that mean the same for both, and the fallback for the rest)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, ClassVar

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from otpd.errors import DeliveryError, TransientDeliveryError
from otpd.providers.base import Provider
from otpd.providers.dns import AsyncioResolver

__all__ = ["AwsProvider", "client_error_parts", "common_aws_error"]

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
MAX_POOL_CONNECTIONS = 10

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "Throttled",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "LimitExceededException",
        "RequestLimitExceeded",
    }
)
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidSecurity",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
)


def client_error_parts(exc: BaseException) -> tuple[str, str, int]:
    """``(code, message, http_status)`` of a botocore ``ClientError``.

    The message is for matching only: AWS puts addresses and numbers in it, so it never
    goes into an otpd error.
    """
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    return str(error.get("Code", "")), str(error.get("Message", "")), int(status)


def common_aws_error(exc: BaseException, service: str) -> DeliveryError | None:
    """The transient errors every AWS API shares (throttling, auth, 5xx, network,
    credentials), or ``None`` when ``exc`` needs the provider's own rules."""
    if isinstance(exc, ClientError):
        code, _, status = client_error_parts(exc)
        if code in THROTTLING_CODES:
            return TransientDeliveryError(f"{service} throttled ({code})", reason="throttled")
        if code in AUTH_CODES or status in (401, 403):
            return TransientDeliveryError(
                f"{service} refused the credentials ({code})", reason="auth"
            )
        if status >= 500:
            return TransientDeliveryError(
                f"{service} server error ({code or 'no code'}, HTTP {status})",
                reason="server_error",
            )
        return None
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return TransientDeliveryError(
            f"no usable AWS credentials ({type(exc).__name__})", reason="no_credentials"
        )
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return TransientDeliveryError(
            f"{service} timed out ({type(exc).__name__})", reason="timeout"
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError | aiohttp.ClientError | OSError):
        return TransientDeliveryError(f"network error ({type(exc).__name__})", reason="network")
    if isinstance(exc, BotoCoreError):
        return TransientDeliveryError(
            f"AWS client error ({type(exc).__name__})", reason="aws_client"
        )
    return None


class AwsProvider(Provider):
    """A provider backed by one aioboto3 client, created in :meth:`open` and closed in
    :meth:`aclose`.

    DNS goes through :class:`~otpd.providers.dns.AsyncioResolver` (passed in
    ``connector_args``): aiobotocore's default is aiohttp's resolver, which runs
    ``getaddrinfo`` on a thread. botocore's own retries are off: a retried send can
    deliver twice, and retrying belongs to the dispatcher.

    Errors are classified in one order for every service: the subclass's own
    :meth:`vendor_error` rules, then :func:`common_aws_error`, then any other
    ``ClientError`` as a refused request.
    """

    service: ClassVar[str]  # the boto3 service name: "sesv2", "sns"
    label: ClassVar[str]  # the service as error messages name it: "SES", "SNS"

    def __init__(
        self, *, region: str, endpoint_url: str, access_key_id: str, secret_access_key: str
    ) -> None:
        super().__init__()
        # config validation guarantees both credentials or neither
        self.region = region
        self.endpoint_url = endpoint_url
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The aiobotocore client; only while the provider is open."""
        if self._client is None:
            raise RuntimeError(f"provider {self.name} is not open")
        return self._client

    async def open(self) -> None:
        async with AsyncExitStack() as stack:
            resolver = AsyncioResolver()
            # the connector does not own a resolver it was given, so close it ourselves
            stack.push_async_callback(resolver.close)
            config = AioConfig(
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
                max_pool_connections=MAX_POOL_CONNECTIONS,
                retries={"mode": "standard", "total_max_attempts": 1},
                connector_args={"resolver": resolver},
            )
            core = get_session()
            # As the session's default, the resolver also serves the clients botocore
            # creates on its own (STS for assumed roles and web identity, SSO).
            core.set_default_client_config(config)
            session = aioboto3.Session(
                botocore_session=core,
                aws_access_key_id=self._access_key_id or None,
                aws_secret_access_key=self._secret_access_key or None,
                region_name=self.region,
            )
            self._client = await stack.enter_async_context(
                session.client(self.service, endpoint_url=self.endpoint_url or None)
            )
            self._stack = stack.pop_all()

    async def aclose(self) -> None:
        self._client = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    def vendor_error(self, code: str, text: str) -> DeliveryError | None:
        """This service's own meaning of a ``ClientError`` (``text`` is its message, lower
        case, for matching only), or ``None`` to apply the rules every AWS API shares."""
        return None

    def classify(self, exc: BaseException) -> DeliveryError:
        if isinstance(exc, ClientError):
            code, text, _ = client_error_parts(exc)
            own = self.vendor_error(code, text.lower())
            if own is not None:
                return own
        common = common_aws_error(exc, self.label)
        if common is not None:
            return common
        if isinstance(exc, ClientError):
            code, _, status = client_error_parts(exc)
            return TransientDeliveryError(
                f"{self.label} refused the request ({code or 'no code'}, HTTP {status})",
                reason=f"{self.name}_error",
            )
        return super().classify(exc)

    async def health(self) -> dict[str, Any]:
        endpoint = self.endpoint_url
        if not endpoint and self._client is not None:
            endpoint = str(self._client.meta.endpoint_url)
        return {"region": self.region, "endpoint": endpoint}
