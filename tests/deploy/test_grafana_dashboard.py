"""The Grafana dashboard in deploy/grafana: every query is valid PromQL and reads only
metrics a running daemon exposes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY, METRIC_NAME, promtool

DASHBOARD = DEPLOY / "grafana" / "otpd.json"
# what Grafana puts in for its variables before a query reaches Prometheus
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries() -> list[str]:
    exprs = [
        str(target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]
    assert exprs, "the dashboard has no queries"
    return exprs


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_panels_have_unique_ids_and_a_prometheus_datasource() -> None:
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]


def test_every_query_is_filtered_by_the_job_variable() -> None:
    for expr in queries():
        selectors = expr.count("otpd_")
        assert expr.count('job=~"$job"') == selectors, expr


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"otpd_dashboard:query{i}", "expr": as_promql(expr)}
        for i, expr in enumerate(queries())
    ]
    file = tmp_path / "dashboard_queries.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool(), "check", "rules", str(file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    used = {name for expr in queries() for name in METRIC_NAME.findall(expr)}
    needed = {
        "otpd_delivery_attempts_total",  # delivery rate per channel and provider
        "otpd_delivery_seconds_bucket",  # provider latency percentiles
        "otpd_http_request_duration_seconds_bucket",  # API latency percentiles
        "otpd_breaker_state",
        "otpd_queue_backlog",
        "otpd_queue_oldest_age_seconds",
        "otpd_rate_limited_total",
        "otpd_sms_spend_today",
        "otpd_sms_daily_budget",
    }
    assert needed <= used, sorted(needed - used)


def test_the_dashboard_queries_only_metrics_the_daemon_exposes(
    metric_names: set[str],
) -> None:
    used = {name for expr in queries() for name in METRIC_NAME.findall(expr)}
    assert used <= metric_names, sorted(used - metric_names)
