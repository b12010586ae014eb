"""schemathesis against a real ``otpd serve`` (memory and Redis stores): every operation of
docs/openapi.json with its coverage phase's boundary cases, generated valid and invalid
requests, then stateful runs along the document's links; every answer must conform to the
document. The daemon runs in its own process so schemathesis's synchronous client stays
out of any event loop."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.engine import Status, events
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from otpd.api.openapi import OPENAPI_PATH
from tests.conftest import TEST_SECRET, free_port

pytestmark = pytest.mark.slow

KEY = "contract-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Requests per store, together above 2,000 within about 45 s on two idle cores: the
# coverage phase (~1,000 boundary and type cases, deterministic), then per operation and mode
# generated ones, then stateful scenarios.
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 12}
# Invalid form bodies take ~100 ms each to generate: fewer of them.
FEWER = {("POST /l/verify-email", GenerationMode.NEGATIVE): 4}
SCENARIOS, STEPS = 30, 10
MIN_CASES = 2000
START_TIMEOUT = 30.0


def write_config(tmp_path: Path, port: int, redis_url: str | None) -> Path:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    store = "backend = 'memory'"
    if redis_url is not None:
        store = (
            f"backend = 'redis'\nredis_url = '{redis_url}'\nkey_prefix = 'c{uuid.uuid4().hex[:8]}:'"
        )
    text = f"""
[server]
port = {port}
instance_id = 'contract-{port}'
[security]
secret_key = '{TEST_SECRET}'
[auth]
keys = [{{ name = "contract", sha256 = "{digest}" }}]
[store]
{store}
[outbox]
dir = '{tmp_path / "outbox"}'
[email]
providers = ["outbox"]
[sms]
providers = ["console"]
[links]
base_url = "http://127.0.0.1:{port}"
hosted = true
success_url = "https://accounts.example.com/verified"
failure_url = "https://accounts.example.com/broken"
[dispatch]
drain_timeout_seconds = 2.0
"""
    path = tmp_path / "otpd.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def otpd_serve(tmp_path: Path, redis_url: str | None) -> Iterator[str]:
    """``otpd serve`` in its own process group on a free port; yields its base URL."""
    port = free_port()
    config = write_config(tmp_path, port, redis_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPD_")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otpd", "serve", "--config", str(config)],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"otpd serve exited:\n{log_path.read_text()}"
            try:
                if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"otpd serve not ready:\n{log_path.read_text()}"
            time.sleep(0.05)
        yield base
        assert proc.poll() is None, f"otpd serve died:\n{log_path.read_text()}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group is this test's own
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Tally:
    """Requests made, and every failed check (one line per distinct failure)."""

    cases: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def validate(self, case: Case[Any], check: Callable[[], object]) -> None:
        self.cases += 1
        try:
            check()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            key = f"{case.operation.label}: {first}"
            self.failures.setdefault(key, f"{key}\n{exc}\n{case.as_curl_command(headers=AUTH)}")


SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected
    report_multiple_bugs=False,
)


def run_coverage(document: dict[str, Any], base: str, tally: Tally) -> None:
    """schemathesis's coverage phase (through its engine, as ``schemathesis run`` does):
    boundary values, missing and wrong-typed fields, for every operation."""
    config = schemathesis.Config.from_dict(
        {
            "headers": AUTH,
            "checks": {"enabled": False, **{c.__name__: {"enabled": True} for c in CHECKS}},
            "phases": {
                "examples": {"enabled": False},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": False},
                "stateful": {"enabled": False},
            },
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema.config.update(base_url=base, headers=AUTH)
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            tally.failures.setdefault(f"engine: {event}", f"engine: {event}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        tally.cases += len(event.recorder.cases)
        for case_id, checks in event.recorder.checks.items():
            for check in checks:
                if check.status is Status.FAILURE and check.failure_info is not None:
                    failure = check.failure_info.failure
                    label = event.recorder.cases[case_id].value.operation.label
                    key = f"{label}: {failure.title}"
                    sample = check.failure_info.code_sample
                    tally.failures.setdefault(key, f"{key}\n{failure.message}\n{sample}")


def fuzz_operations(schema: Any, session: requests.Session, tally: Tally) -> int:
    """Every operation: its documented examples, then generated valid and invalid requests."""
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        strategies = [
            (operation.as_strategy(generation_mode=mode), FEWER.get((operation.label, mode), count))
            for mode, count in EXAMPLES.items()
        ]
        strategies += [(s, 1) for s in schema.get_strategies_from_examples(operation)]
        for strategy, count in strategies:

            @hypothesis.settings(SETTINGS, max_examples=count)
            @hypothesis.given(case=strategy)
            def run(case: Case[Any]) -> None:
                response = case.call(session=session, headers=AUTH)
                tally.validate(case, lambda: case.validate_response(response, checks=CHECKS))

            # nothing to make invalid in an operation without parameters or body
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                run()
    return operations


def run_stateful(schema: Any, session: requests.Session, tally: Tally) -> None:
    """Scenarios along the document's links: OTP issue -> verify and its delivery task,
    message -> task, link request -> confirm or check -> confirm, dead letters -> replay,
    TOTP enrolment -> confirm -> verify, audit page -> next page."""
    machine = schema.as_state_machine()

    class Contract(machine):  # type: ignore[valid-type, misc]
        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            return {"session": session, "headers": AUTH}

        def validate_response(
            self, response: Response, case: Case[Any], additional_checks: Any = None, **kwargs: Any
        ) -> None:
            tally.validate(case, lambda: case.validate_response(response, checks=CHECKS))

    Contract.run(
        settings=hypothesis.settings(SETTINGS, max_examples=SCENARIOS, stateful_step_count=STEPS)
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_every_answer_conforms_to_the_document(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    with otpd_serve(tmp_path, redis_url) as base, requests.Session() as session:
        # from the document as served, but loaded as a dict: schemathesis skips the
        # operation that serves the schema it was loaded from, and that is one to test
        served = session.get(f"{base}{OPENAPI_PATH}", headers=AUTH, timeout=10)
        served.raise_for_status()
        schema = schemathesis.openapi.from_dict(served.json())
        schema.config.update(base_url=base)
        tally = Tally()
        started = time.monotonic()
        run_coverage(served.json(), base, tally)
        covered = tally.cases
        operations = fuzz_operations(schema, session, tally)
        fuzzed = tally.cases - covered
        run_stateful(schema, session, tally)
        elapsed = time.monotonic() - started
    print(
        f"\n{store}: {tally.cases} cases ({covered} coverage, {fuzzed} generated over "
        f"{operations} operations, {tally.cases - covered - fuzzed} stateful) in {elapsed:.1f}s"
    )
    assert not tally.failures, "\n\n".join(tally.failures.values())
    assert operations == sum(len(item) for item in schema.raw_schema["paths"].values())
    assert tally.cases >= MIN_CASES
