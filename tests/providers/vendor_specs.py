"""The vendors' published OpenAPI documents (``tests/providers/vendor-specs``)
and the requests otpd sends, held against them with openapi-core.

The documents are read as published and patched in memory for their known quirks only
(see that folder's README); the patches are :func:`patch_mailgun` and :func:`patch_vonage`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_spec_validator.readers import read_from_filename
from werkzeug.datastructures import Headers, ImmutableMultiDict

__all__ = [
    "SPEC_DIR",
    "SentRequest",
    "VendorSpecs",
    "form_request",
    "json_request",
    "load_specs",
    "multipart_request",
    "recording_vendor",
    "request_problems",
    "response_problems",
    "server_urls",
    "spec_dir_or_skip",
]

# Unmodified copies of the documents live in the repository (their sources are in the
# README beside them), so a clean clone validates against them; OTPD_VENDOR_SPECS points
# at newer ones.
SPEC_DIR = Path(
    os.environ.get("OTPD_VENDOR_SPECS") or Path(__file__).resolve().parent / "vendor-specs"
)
FILES = {
    "sendgrid": "tsg_mail_v3.json",
    "mailgun": "mailgun_openapi.yaml",
    "twilio": "twilio_api_v2010.json",
    "vonage": "vonage_sms.yml",
}
# The documents are the vendors', not ours: checking them against the OpenAPI meta-schema
# would take ~5 s (the Mailgun one alone 4 s) and prove nothing about otpd.
_CONFIG = Config(spec_validator_cls=None)


@dataclass(frozen=True, slots=True)
class SentRequest:
    """One HTTP request as it left otpd: method, URL, headers and the body's bytes."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        for name, value in self.headers.items():
            if name.lower() == "content-type":
                return value
        return ""

    def at(self, host_url: str) -> SentRequest:
        """The same request sent to ``host_url`` (scheme and host), path and all kept."""
        parts = urlsplit(self.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return SentRequest(self.method, host_url.rstrip("/") + path, self.headers, self.body)


@dataclass(slots=True)
class _OpenApiRequest:
    """A :class:`SentRequest` the way openapi-core's ``Request`` protocol reads it."""

    host_url: str
    path: str
    method: str
    content_type: str
    body: bytes
    parameters: RequestParameters = field(default_factory=RequestParameters)

    @classmethod
    def of(cls, sent: SentRequest) -> _OpenApiRequest:
        parts = urlsplit(sent.url)
        query = ImmutableMultiDict(parse_qsl(parts.query, keep_blank_values=True))
        return cls(
            host_url=f"{parts.scheme}://{parts.netloc}",
            path=parts.path,
            method=sent.method.lower(),
            content_type=sent.content_type,
            body=sent.body,
            parameters=RequestParameters(query=query, header=Headers(dict(sent.headers))),
        )


@dataclass(slots=True)
class _OpenApiResponse:
    status_code: int
    content_type: str
    data: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class VendorSpecs:
    """The four documents, loaded and patched, ready to validate requests."""

    sendgrid: OpenAPI
    mailgun: OpenAPI
    twilio: OpenAPI
    vonage: OpenAPI
    documents: Mapping[str, Mapping[str, Any]]


def spec_dir_or_skip(directory: Path = SPEC_DIR) -> Path:
    """``directory`` when it holds the four documents; else skip, or fail under CI=true."""
    missing = [name for name in FILES.values() if not (directory / name).is_file()]
    if missing:
        message = (
            f"vendor OpenAPI documents not found in {directory} (missing {', '.join(missing)}): "
            "restore tests/providers/vendor-specs or set OTPD_VENDOR_SPECS"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return directory


def _read(path: Path) -> dict[str, Any]:
    if path.suffix == ".json":
        document: dict[str, Any] = json.loads(path.read_bytes())
        return document
    data, _ = read_from_filename(str(path))
    assert isinstance(data, dict)
    return data


def _resolve(document: Mapping[str, Any], node: Mapping[str, Any]) -> Any:
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node
    target: Any = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def patch_mailgun(document: dict[str, Any]) -> None:
    """Type ``to``, ``cc``, ``bcc`` and ``o:tag`` of the Messages form as one string.

    The document types them as arrays. openapi-core reads an array-typed multipart field
    with ``getlist``, so a request without ``to`` would read as ``to: []`` and pass
    ``required``; as a string (what otpd sends: one recipient, one field) a missing
    ``to`` is missing.
    """
    body = document["paths"]["/v3/{domain_name}/messages"]["post"]["requestBody"]
    schema = _resolve(document, body["content"]["multipart/form-data"]["schema"])
    for name in ("to", "cc", "bcc", "o:tag"):
        prop = schema["properties"][name]
        assert prop["type"] == "array", f"mailgun {name} is no longer an array: drop the patch"
        schema["properties"][name] = {"type": "string", "description": prop.get("description")}


def patch_vonage(document: dict[str, Any]) -> None:
    """Fold the server's path (``https://rest.nexmo.com/sms``) into the paths, and make
    the 200 answer's ``oneOf`` an ``anyOf``: its two schemas require nothing, so every
    answer matches both and ``oneOf`` refuses them all."""
    [server] = document["servers"]
    parts = urlsplit(server["url"])
    prefix = parts.path.rstrip("/")
    document["servers"] = [{**server, "url": f"{parts.scheme}://{parts.netloc}"}]
    document["paths"] = {prefix + path: item for path, item in document["paths"].items()}
    for item in document["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for media in operation["responses"].get("200", {}).get("content", {}).values():
                if "oneOf" in media.get("schema", {}):
                    media["schema"]["anyOf"] = media["schema"].pop("oneOf")


def load_specs(directory: Path = SPEC_DIR) -> VendorSpecs:
    """The four documents from ``directory``, patched for their quirks."""
    documents = {vendor: _read(directory / name) for vendor, name in FILES.items()}
    patch_mailgun(documents["mailgun"])
    patch_vonage(documents["vonage"])
    apps = {vendor: OpenAPI.from_dict(doc, config=_CONFIG) for vendor, doc in documents.items()}
    return VendorSpecs(documents=documents, **apps)


def server_urls(document: Mapping[str, Any], path: str) -> list[str]:
    """The server URLs that serve ``path``: its own ``servers``, else the document's."""
    servers = document["paths"][path].get("servers") or document.get("servers") or []
    return [str(server["url"]).rstrip("/") for server in servers]


def _explain(error: BaseException) -> str:
    """An openapi-core error with the schema errors its causes carry."""
    lines = [f"{type(error).__name__}: {error}"]
    cause: BaseException | None = error
    while cause is not None:
        for schema_error in getattr(cause, "schema_errors", ()) or ():
            where = "/".join(str(p) for p in schema_error.absolute_path) or "(root)"
            lines.append(f"  {where}: {schema_error.message}")
        cause = cause.__cause__
    return "\n".join(lines)


def request_problems(spec: OpenAPI, sent: SentRequest) -> list[str]:
    """What ``spec`` finds wrong with ``sent`` (method, path, security, content type,
    body); empty when the request conforms."""
    return [_explain(error) for error in spec.iter_request_errors(_OpenApiRequest.of(sent))]


def response_problems(
    spec: OpenAPI,
    sent: SentRequest,
    status: int,
    body: bytes = b"",
    content_type: str = "application/json",
) -> list[str]:
    """What ``spec`` finds wrong with an answer to ``sent`` (for the tests' canned ones)."""
    response = _OpenApiResponse(status, content_type, body, Headers())
    errors = spec.iter_response_errors(_OpenApiRequest.of(sent), response)
    return [_explain(error) for error in errors]


def json_request(url: str, body: Any, headers: Mapping[str, str]) -> SentRequest:
    """A JSON POST, encoded the way aiohttp's ``json=`` encodes it."""
    data = json.dumps(body).encode()
    return SentRequest("POST", url, {**headers, "Content-Type": "application/json"}, data)


def form_request(
    url: str, fields: Iterable[tuple[str, str]], headers: Mapping[str, str]
) -> SentRequest:
    """An ``application/x-www-form-urlencoded`` POST of ``fields``."""
    content_type = {"Content-Type": "application/x-www-form-urlencoded"}
    return SentRequest("POST", url, {**headers, **content_type}, urlencode(list(fields)).encode())


async def multipart_request(
    url: str, fields: Iterable[tuple[str, str]], headers: Mapping[str, str]
) -> SentRequest:
    """A ``multipart/form-data`` POST of ``fields``, written by aiohttp's ``FormData``."""
    payload = aiohttp.FormData(list(fields), default_to_multipart=True)()
    body = await payload.as_bytes()
    return SentRequest("POST", url, {**headers, "Content-Type": payload.content_type}, body)


@contextlib.asynccontextmanager
async def recording_vendor(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[str, list[SentRequest]]]:
    """A real HTTP server on 127.0.0.1 standing in for a vendor: yields its base URL and
    the list it appends each request to, as received (headers and body bytes), and
    answers every request with ``status`` and ``body``."""
    seen: list[SentRequest] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(
            SentRequest(
                request.method, str(request.url), dict(request.headers), await request.read()
            )
        )
        reply = web.Response(status=status, body=body, headers=headers)
        if body:
            reply.content_type = content_type
        return reply

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), seen
    finally:
        await server.close()
