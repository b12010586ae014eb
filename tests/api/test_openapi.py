"""The OpenAPI document: every route the app serves and nothing else, the same request
rules as the parser, valid OpenAPI 3.1, kept in docs/openapi.json, served behind the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from otpd.api import create_app
from otpd.api.openapi import OPENAPI_PATH, OPERATIONS, REGENERATE, document, render
from otpd.api.schemas import ReminderUserBody, parse_body
from otpd.app import Otpd
from otpd.errors import ValidationError
from tests.conftest import ConfigFactory, open_client

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
KEY = "contract-test-key"


def served_routes(make_config: ConfigFactory) -> set[tuple[str, str]]:
    app = create_app(make_config())
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document()["paths"].items() for method in item}


def test_every_route_the_app_serves_is_documented_and_nothing_else(
    make_config: ConfigFactory,
) -> None:
    served = served_routes(make_config)
    assert (("GET", OPENAPI_PATH)) in served
    assert documented_routes() == served


def test_docs_openapi_json_is_the_generated_document() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"docs/openapi.json is out of date: regenerate it with `{REGENERATE}`"
    )


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(json.loads(render()), cls=OpenAPIV31SpecValidator)


def request_bodies() -> list[tuple[type[Any], dict[str, Any]]]:
    schemas = document()["components"]["schemas"]
    bodies = {op.body for op in OPERATIONS if op.body is not None}
    bodies.add(ReminderUserBody)  # nested in RemindersBody
    return [(cls, schemas[cls.__name__]) for cls in sorted(bodies, key=lambda c: c.__name__)]


@pytest.mark.parametrize(
    ("cls", "schema"), request_bodies(), ids=lambda p: getattr(p, "__name__", "")
)
def test_request_schemas_state_the_parsers_rules(cls: type[Any], schema: dict[str, Any]) -> None:
    assert schema["additionalProperties"] is False
    with pytest.raises(ValidationError) as missing:
        parse_body(cls, json.dumps({"unknown": 1}).encode())
    required = {k for k, v in missing.value.fields.items() if v == "required"}
    assert required == set(schema.get("required", []))
    assert missing.value.fields["unknown"] == "unknown field"
    for field, prop in schema["properties"].items():
        if "maxLength" not in prop:
            continue
        with pytest.raises(ValidationError) as long:
            parse_body(cls, json.dumps({field: "x" * (prop["maxLength"] + 1)}).encode())
        assert long.value.fields[field] == f"at most {prop['maxLength']} characters"


async def test_get_v1_openapi_json_serves_the_document_behind_the_key(
    make_config: ConfigFactory,
) -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = make_config(auth={"keys": [{"name": "docs", "sha256": digest}]})
    async with Otpd(config) as daemon:
        client = await open_client(daemon)
        try:
            refused = await client.get(OPENAPI_PATH)
            assert refused.status == 401
            answer = await client.get(OPENAPI_PATH, headers={"Authorization": f"Bearer {KEY}"})
            assert answer.status == 200
            assert answer.content_type == "application/json"
            assert await answer.json() == document()
        finally:
            await client.close()
