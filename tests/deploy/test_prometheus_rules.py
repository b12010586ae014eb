"""The alert rules in deploy/prometheus: valid (``promtool check rules``), each proven by
its unit test on synthetic series (``promtool test rules``), and written only over metrics
the daemon exposes."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import DEPLOY, METRIC_NAME, promtool

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"


def run(*args: str) -> str:
    done = subprocess.run(
        [promtool(), *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS" in run("check", "rules", RULES.name)


def test_every_rule_passes_its_unit_tests() -> None:
    assert "SUCCESS" in run("test", "rules", RULE_TESTS.name)


def test_every_alert_has_a_unit_test_that_sees_it_fire() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == {str(rule["alert"]) for rule in alerts()}


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in alerts():
        labels = rule.get("labels", {})
        annotations = rule.get("annotations", {})
        assert isinstance(labels, dict) and labels.get("severity") in ("warning", "critical")
        assert isinstance(annotations, dict) and annotations.get("summary"), rule["alert"]


def test_the_alerts_use_only_metrics_the_daemon_exposes(metric_names: set[str]) -> None:
    used = {name for rule in alerts() for name in METRIC_NAME.findall(str(rule["expr"]))}
    assert used, "no otpd metric found in the rules"
    assert used <= metric_names, sorted(used - metric_names)
