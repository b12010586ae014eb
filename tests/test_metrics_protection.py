"""Who may read /metrics: a bearer ``metrics.token``, a listener of its own
(``metrics.port``), and production's refusal of an unprotected public /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from otpd.api import HttpServer
from otpd.app import Otpd
from otpd.clock import FakeClock
from otpd.config import load_config
from otpd.errors import ConfigError, StartupError
from tests.api.helpers import Client, assert_error, error_of
from tests.config.test_loader import production
from tests.conftest import ConfigFactory, free_port, open_client

TOKEN = "scrape-token-0123456789abcdef"


@pytest.fixture
async def serve(make_config: ConfigFactory, clock: FakeClock) -> AsyncIterator[Any]:
    """``await serve(**sections)``: an open daemon on the memory store and its client."""
    async with AsyncExitStack() as stack:

        async def factory(**sections: dict[str, Any]) -> tuple[Otpd, Client]:
            daemon = await stack.enter_async_context(
                Otpd(make_config("memory", **sections), clock=clock)
            )
            client = await open_client(daemon)
            stack.push_async_callback(client.close)
            return daemon, client

        yield factory


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_without_a_token_metrics_are_public_as_before(serve: Any) -> None:
    _, client = await serve()
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")


async def test_a_token_is_required_and_checked(serve: Any) -> None:
    _, client = await serve(metrics={"token": TOKEN})
    await error_of(await client.get("/metrics"), 401, "unauthorized")
    await error_of(await client.get("/metrics", headers=bearer("x" + TOKEN)), 401, "unauthorized")
    await error_of(await client.get("/metrics", headers=bearer(TOKEN[:-1])), 401, "unauthorized")
    basic = {"Authorization": f"Basic {TOKEN}"}
    await error_of(await client.get("/metrics", headers=basic), 401, "unauthorized")
    resp = await client.get("/metrics", headers=bearer(TOKEN))
    assert resp.status == 200
    assert "otpd_http_requests_total" in await resp.text()
    # the token guards /metrics only: health stays public
    assert (await client.get("/healthz")).status == 200


async def test_a_metrics_token_is_no_api_key(serve: Any) -> None:
    from otpd.crypto import api_key_digest

    keys = [{"name": "web", "sha256": api_key_digest("api-key-0123456789")}]
    _, client = await serve(metrics={"token": TOKEN}, auth={"keys": keys})
    await error_of(await client.get("/v1/dead-letters", headers=bearer(TOKEN)), 401, "unauthorized")
    await error_of(
        await client.get("/metrics", headers=bearer("api-key-0123456789")), 401, "unauthorized"
    )
    assert (await client.get("/metrics", headers=bearer(TOKEN))).status == 200


async def test_a_listener_of_its_own_serves_metrics_and_the_api_does_not(serve: Any) -> None:
    port = free_port()
    _, client = await serve(metrics={"port": port, "token": TOKEN})
    await error_of(await client.get("/metrics", headers=bearer(TOKEN)), 404, "not_found")
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            assert resp.status == 401
            assert_error(await resp.json(), "unauthorized")
        async with http.get(f"{url}/metrics", headers=bearer(TOKEN)) as resp:
            assert resp.status == 200
            text = await resp.text()
        async with http.get(f"{url}/v1/dead-letters") as resp:
            assert resp.status == 404
            assert_error(await resp.json(), "not_found")
    # the API listener's requests are in the listener's answer, and its own are counted
    assert 'route="/metrics"' in text
    assert 'status="404"' in text


async def test_a_listener_of_its_own_without_a_token_is_open_on_its_address(
    serve: Any,
) -> None:
    port = free_port()
    await serve(metrics={"port": port})
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200


async def test_a_taken_metrics_port_stops_the_start(make_config: ConfigFactory) -> None:
    port = free_port()
    config = make_config("memory", metrics={"port": port})
    async with HttpServer(config, port=0):
        with pytest.raises(StartupError, match=f"127.0.0.1:{port} for metrics"):
            async with HttpServer(config, port=0):
                pass


def problems_of(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load_config(data=data, env={})
    return tuple(info.value.problems)


def test_production_refuses_an_unprotected_metrics_on_a_public_address() -> None:
    data = production(metrics={"token": ""})
    (problem,) = problems_of(data)
    assert problem == (
        "metrics.token: production serves /metrics on a non-loopback address (server.host "
        "is '0.0.0.0') only with a token: set metrics.token, or metrics.port with a "
        "loopback metrics.host"
    )
    assert "\n" not in problem


def test_production_refuses_an_unprotected_public_metrics_listener() -> None:
    data = production(metrics={"token": "", "port": 9102, "host": "0.0.0.0"})  # noqa: S104
    (problem,) = problems_of(data)
    assert problem.startswith("metrics.token: ")
    assert "(metrics.host is '0.0.0.0')" in problem


@pytest.mark.parametrize(
    "metrics",
    [
        {"token": TOKEN},
        {"token": "", "port": 9102},  # its own listener on loopback
        {"token": TOKEN, "port": 9102, "host": "0.0.0.0"},  # noqa: S104
    ],
)
def test_production_accepts_protected_metrics(metrics: dict[str, Any]) -> None:
    assert load_config(data=production(metrics=metrics), env={}).server.env == "production"


def test_production_accepts_unprotected_metrics_on_loopback() -> None:
    data = production(metrics={"token": ""}, server={"host": "127.0.0.1"})
    assert load_config(data=data, env={}).metrics.token == ""


def test_dev_serves_unprotected_metrics_anywhere_api_keys_allow() -> None:
    from otpd.crypto import api_key_digest

    data = {
        "server": {"host": "0.0.0.0"},  # noqa: S104
        "auth": {"keys": [{"name": "web", "sha256": api_key_digest("k" * 20)}]},
    }
    assert load_config(data=data, env={}).metrics.token == ""


async def test_production_refuses_a_public_host_given_to_the_server() -> None:
    config = load_config(
        data=production(metrics={"token": ""}, server={"host": "127.0.0.1"}), env={}
    )
    server = HttpServer(config, host="0.0.0.0")  # noqa: S104
    with pytest.raises(ConfigError, match=r"^metrics\.token: .*server\.host is '0\.0\.0\.0'"):
        await server.__aenter__()


@pytest.mark.parametrize(
    ("metrics", "key"),
    [
        ({"token": "short"}, "metrics.token"),
        ({"token": f" {TOKEN}"}, "metrics.token"),
        ({"port": 70000}, "metrics.port"),
        ({"port": 8080}, "metrics.port"),  # the API's port
        ({"host": ""}, "metrics.host"),
    ],
)
def test_metrics_settings_are_checked(metrics: dict[str, Any], key: str) -> None:
    (problem,) = problems_of({"metrics": metrics})
    assert problem.startswith(f"{key}: "), problem


def test_the_token_can_come_from_the_environment_and_is_masked() -> None:
    from otpd.config import masked_config

    config = load_config(data={}, env={"OTPD_METRICS__TOKEN": TOKEN})
    assert config.metrics.token == TOKEN
    assert masked_config(config)["metrics"]["token"] == "********"
