"""The Grafana dashboard: a valid model whose every query names series the agent really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api import Decision, Verdict
from kube_netpol.observability.exposition import generate_text
from kube_netpol.observability.metrics import AgentCollector, ControlStats, VerdictMetrics
from kube_netpol.observability.nfqueue_proc import QueueStats
from kube_netpol.tools.testing.metrics_text import parse_metrics
from unit_standins import ByPort, Queued, engine_of, syn

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
CHART_DASHBOARD = ROOT / "charts" / "kube-netpol" / "dashboards" / "kube-netpol.json"
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
#: PromQL functions and aggregations the dashboard may use (a misspelt one fails the test).
FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "bottomk", "clamp_max", "clamp_min", "count", "count_values", "delta",
    "deriv", "group", "histogram_quantile", "increase", "irate", "label_replace", "max", "max_over_time", "min",
    "quantile", "rate", "scalar", "sort", "sort_desc", "stddev", "sum", "time", "topk", "vector",
}
AGGREGATIONS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "group", "quantile", "stddev", "count_values"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OPERATOR_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)'
                   r"|(?P<number>\d+(?:\.\d+)?)|(?P<punct>=~|!~|!=|==|>=|<=|[(){}\[\],=+\-*/<>^%]))")


# --------------------------------------------------------------- what's exported


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, scraped from the agent's collectors as run.py registers them."""
    deny = Decision(Verdict.DENY, "x/deny-all", "", "isolated")
    allow = Decision(Verdict.ACCEPT, "x/allow", "ingress[0]", "allowed")
    engine = engine_of(ByPort({80: deny, 81: allow, 82: deny}))
    # Through the verdict loop's own recording: a denial audit mode let through, an allowed and a denied connection.
    VerdictLoop(engine, 100, fail_open=True, audit=True).handle(Queued(syn(80)))
    normal = VerdictLoop(engine, 100, fail_open=True)
    normal.handle(Queued(syn(81)))
    normal.handle(Queued(syn(82)))
    control = ControlStats()
    control.record_sync(0.004, ok=True)
    control.record_sync(0.2, ok=False)
    control.record_apply_latency(0.03)
    collector = AgentCollector(
        VerdictMetrics(engine),
        control,
        invalid_objects=lambda: {"NetworkPolicy": 1},
        managed_ips=lambda: (2, 1),
        cache_stats=lambda: (5, 3, 1),
        queue_stats=lambda: [QueueStats(100, 1234, 2, 2, 128, 7, 1, 99)],
    )
    registry = CollectorRegistry()
    registry.register(collector)
    # The agent registers into prometheus_client's default registry, which also has these.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    series: dict[str, set[str]] = {}
    for family in parse_metrics(generate_text(registry).decode()).values():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return exported_series()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


# ------------------------------------------------------------- PromQL reading


class Query:
    """The metric selectors and label lists of one PromQL expression."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.selectors: list[tuple[str, set[str]]] = []  # (metric, matcher label names)
        self.grouping: set[str] = set()
        self._read(self._tokens(expr.replace("$__rate_interval", "5m").replace("$__range", "1h")))

    @staticmethod
    def _tokens(expr: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(expr.rstrip()):
            match = TOKEN.match(expr, pos)
            if match is None:
                raise AssertionError(f"cannot read {expr[pos:]!r} in {expr!r}")
            kind = match.lastgroup
            assert kind is not None
            tokens.append((kind, match.group(kind)))
            pos = match.end()
        return tokens

    def _read(self, tokens: list[tuple[str, str]]) -> None:
        i = 0
        depth_range = 0
        while i < len(tokens):
            kind, text = tokens[i]
            following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
            if text == "[":
                depth_range += 1
            elif text == "]":
                depth_range -= 1
            elif depth_range:
                pass  # a range duration such as 5m
            elif kind == "ident" and text in LABEL_LIST_KEYWORDS:
                if following == "(":
                    end = tokens.index(("punct", ")"), i)
                    self.grouping.update(t for k, t in tokens[i + 2:end] if k == "ident")
                    i = end
            elif kind == "ident" and text in OPERATOR_KEYWORDS:
                pass
            elif kind == "ident" and (following == "(" or text in AGGREGATIONS):
                assert text in FUNCTIONS, f"unknown function {text!r} in {self.expr!r}"
            elif kind == "ident":
                labels: set[str] = set()
                if following == "{":
                    end = tokens.index(("punct", "}"), i)
                    matchers = tokens[i + 2:end]
                    labels = {t for j, (k, t) in enumerate(matchers) if k == "ident" and (j == 0 or matchers[j - 1][1] == ",")}
                    i = end
                self.selectors.append((text, labels))
            elif text == "{":
                raise AssertionError(f"a selector without a metric name in {self.expr!r}")
            i += 1

    @property
    def metrics(self) -> set[str]:
        return {name for name, _ in self.selectors}


def test_query_reader_finds_metrics_and_labels() -> None:
    query = Query('histogram_quantile(0.9, sum by (le, protocol) (rate(m_bucket{job=~"$job",a="x,y"}[$__rate_interval])))'
                  " / on (instance) group_left (b) other_metric")
    assert query.selectors == [("m_bucket", {"job", "a"}), ("other_metric", set())]
    assert query.grouping == {"le", "protocol", "instance", "b"}
    with pytest.raises(AssertionError, match="unknown function"):
        Query("rtae(m[5m])")


# ---------------------------------------------------------------- dashboard


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


def queries(dashboard: dict) -> list[tuple[str, dict, str]]:
    """(panel title, target, expr) of every query."""
    return [(p["title"], t, t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def test_dashboard_model(dashboard: dict) -> None:
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_every_query_names_exported_series_and_labels(dashboard: dict, series: dict[str, set[str]]) -> None:
    checked = 0
    for title, target, expr in queries(dashboard):
        query = Query(expr)
        assert query.selectors, f"{title}: {expr!r} selects nothing"
        available = set(TARGET_LABELS)
        for metric, labels in query.selectors:
            assert metric in series, f"{title}: {metric} is not exported (exported: {sorted(series)})"
            unknown = labels - series[metric] - TARGET_LABELS
            assert not unknown, f"{title}: {metric} has no label {sorted(unknown)}"
            available |= series[metric]
            checked += 1
        unknown_grouping = query.grouping - available
        assert not unknown_grouping, f"{title}: grouping by labels no series has: {sorted(unknown_grouping)}"
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend_labels <= available, f"{title}: legend names unknown labels {sorted(legend_labels - available)}"
    assert checked > 20


def test_template_variables_query_exported_series(dashboard: dict, series: dict[str, set[str]]) -> None:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["definition"])
        assert match, variable["definition"]
        query = Query(match.group(1))
        assert all(metric in series for metric in query.metrics)
        assert match.group(2) in TARGET_LABELS | set().union(*(series[m] for m in query.metrics))


def test_dashboard_covers_the_agents_metrics(dashboard: dict) -> None:
    used = set().union(*(Query(expr).metrics for _, _, expr in queries(dashboard)))
    prefix = "kube_network_policies_"
    wanted = {
        "packet_count", "packet_process_time_bucket", "packet_process_duration_microseconds", "audit_would_deny_count",
        "verdicts_by_policy", "nfqueue_queue_total", "nfqueue_queue_dropped", "nfqueue_user_dropped",
        "policy_apply_latency_seconds_bucket", "dataplane_sync_duration_seconds_bucket", "dataplane_sync_errors",
        "invalid_objects", "managed_pod_ips", "verdict_cache", "build_info",
    }
    assert not {prefix + name for name in wanted} - used
    denials = [expr for _, _, expr in queries(dashboard) if "verdicts_by_policy" in expr and 'verdict="deny"' in expr]
    assert denials and all("policy" in Query(expr).grouping for expr in denials)


def test_query_check_rejects_unknown_metrics(series: dict[str, set[str]]) -> None:
    # The check must bite: a histogram's base name and a misspelt counter are not exported series.
    assert "kube_network_policies_packet_process_time" not in series
    assert "kube_network_policies_packet_count_total" not in series
    assert "kube_network_policies_packet_process_time_bucket" in series and "le" in series[
        "kube_network_policies_packet_process_time_bucket"]


def test_chart_ships_the_same_dashboard() -> None:
    if not CHART_DASHBOARD.exists():
        pytest.skip("the Helm chart has no dashboard file")
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), (
        f"{CHART_DASHBOARD.relative_to(ROOT)} differs from {DASHBOARD.relative_to(ROOT)}; copy it"
    )
