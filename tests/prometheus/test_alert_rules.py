"""The alert rules: valid for Prometheus (`promtool check rules`), unit-tested (`promtool test rules`), shipped once.

docs/prometheus-alerts.yaml is the one source; the chart's copy must be
byte-identical (the chart cannot read files outside itself), and every alert
must have a unit test in alerts_test.yaml and an entry in the docs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_server import ALERT_RULES, PROMTOOL, REPO

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (apt-get install prometheus)")

RULES_TEST = Path(__file__).with_name("alerts_test.yaml")
CHART_RULES = REPO / "charts" / "kube-netpol" / "alerts" / "kube-netpol.rules.yaml"
OBSERVABILITY_DOC = REPO / "docs" / "observability.md"


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(ALERT_RULES))
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_test_rules_passes() -> None:
    # Paths in the test file are relative to it.
    result = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    print(f"promtool test rules: SUCCESS for {len(alerts())} alerts")


def test_promtool_test_rules_fails_when_a_rule_breaks(tmp_path: Path) -> None:
    """The unit tests bite: a rule that never fires fails them."""
    broken = ALERT_RULES.read_text().replace("expr: up{job=\"kube-netpol\"} == 0", "expr: up{job=\"kube-netpol\"} == 42")
    assert broken != ALERT_RULES.read_text()
    (tmp_path / "rules.yaml").write_text(broken)
    test_file = RULES_TEST.read_text().replace("../../docs/prometheus-alerts.yaml", "rules.yaml")
    (tmp_path / "alerts_test.yaml").write_text(test_file)
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "KubeNetpolAgentDown" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_every_alert_has_labels_annotations_and_a_documented_runbook() -> None:
    documented = set(re.findall(r"^### (KubeNetpol\w+)$", OBSERVABILITY_DOC.read_text(), re.MULTILINE))
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"].endswith("docs/observability.md#" + name.lower()), name
        assert name in documented, f"docs/observability.md has no '### {name}' section"
        assert 'job="kube-netpol"' in rule["expr"] or "kube_pod_container_status_ready" in rule["expr"], name


def test_the_chart_ships_the_same_rules() -> None:
    assert CHART_RULES.read_bytes() == ALERT_RULES.read_bytes(), (
        f"{CHART_RULES.relative_to(REPO)} differs from {ALERT_RULES.relative_to(REPO)}; copy it")
