"""The dashboard and the alert rules against a real Prometheus scraping the real agent while traffic flows.

Prometheus (Debian's package) runs in the lab's node namespace next to the
agent, scrapes it every second and evaluates docs/prometheus-alerts.yaml.
After two rounds of traffic and a policy change, every query of every
dashboard panel must return series with a value, evaluated by Prometheus
itself, with the dashboard's template variables resolved the way Grafana
resolves them. The queries over audit-mode counters have no series while
the agent enforces: they are shown to return data in an audit-mode lab.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from e2e_agentlab import B_ON_TCP_80, DUAL_STACK_PODS, AgentLab, agent_lab, deny_ingress, requires_root
from e2e_observe import scrape, tcp_connect, udp_exchange
from prometheus_server import JOB, PROMETHEUS, PrometheusServer

from kube_netpol.tools.conformance.dataplane_agent import STATUS_HOST, STATUS_PORT
from kube_netpol.tools.testing.metrics_text import type_lines

pytestmark = [*requires_root, pytest.mark.skipif(PROMETHEUS is None, reason="needs prometheus (apt-get install prometheus)")]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
OBSERVABILITY_DOC = REPO / "docs" / "observability.md"
PREFIX = "kube_network_policies_"
TARGET = f"{STATUS_HOST}:{STATUS_PORT}"
#: Grafana's interval variables. Longer than the whole test, so every rate() window holds every
#: sample Prometheus took: a counter that moved between two scrapes has a rate, whenever "now" is.
INTERVALS = {"__rate_interval": "10m", "__range": "1h", "__interval": "10m"}
#: The counters that have series only in audit mode.
AUDIT_ONLY = PREFIX + "audit_would_deny_count"
#: Refused by the agent (a /33 prefix), so that "Invalid objects refused" has a series.
BAD_CIDR_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "bad-cidr", "namespace": "x"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
}


# --------------------------------------------------------------------- the dashboard


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of the dashboard, rows' nested panels included."""
    model = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in model["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], t["refId"], t["expr"]) for t in inner.get("targets", [])]
    return found


def template_variables(prom: PrometheusServer) -> dict[str, str]:
    """Each query variable resolved through Prometheus, as Grafana formats a multi-value regex: (a|b)."""
    model = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    values: dict[str, str] = dict(INTERVALS)
    for variable in model["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["definition"])
        assert match, variable["definition"]
        found = prom.label_values(substitute(match.group(1), values), match.group(2))
        assert found, f"template variable {variable['name']}: {variable['definition']} lists nothing"
        print(f"template variable ${variable['name']} = {found}")
        # A regex of the values inside a PromQL string: backslashes doubled.
        values[variable["name"]] = ("(" + "|".join(re.escape(v) for v in found) + ")").replace("\\", "\\\\")
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown dashboard variable ${name} in {expr!r}"
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(s["value"][1]) for s in result) if math.isfinite(v)]


def check_queries(prom: PrometheusServer, targets: list[tuple[str, str, str]], values: dict[str, str]) -> None:
    """Every query returns at least one series with a finite value, evaluated by Prometheus."""
    empty = []
    for title, ref, expr in targets:
        result = prom.query(substitute(expr, values))
        finite = finite_values(result)
        print(f"dashboard query {title!r} [{ref}]: {len(result)} series from a real scrape"
              + (f", e.g. {finite[0]:.6g}" if finite else ""))
        if not finite:
            empty.append((title, ref, expr, result))
    assert not empty, "dashboard queries without data:\n" + "\n".join(map(repr, empty))


# ------------------------------------------------------------------------- traffic


def traffic(env: AgentLab, audit: bool) -> None:
    """Allowed and denied (let through in audit mode), TCP and UDP, IPv4 and IPv6, and a repeat (a cache hit)."""
    attempts = [
        tcp_connect(env, "x/b", "x/a")[0],
        tcp_connect(env, "x/b", "x/a")[0],
        tcp_connect(env, "x/b", "x/a", version=6)[0],
        udp_exchange(env, "x/a", "x/b"),  # x/b is never isolated; x/a is managed, so it is judged
        tcp_connect(env, "y/a", "x/a", timeout=0.3)[0],
        udp_exchange(env, "x/b", "x/a", version=6),
    ]
    assert [a.connected for a in attempts] == [True] * 4 + [audit] * 2


def wait_scraped(env: AgentLab, prom: PrometheusServer) -> None:
    """Until Prometheus holds the agent's present counts (nothing moves them meanwhile)."""
    agent = scrape(env)
    wanted = {
        "packet_count": agent.total("packet_count"),
        "policy_apply_latency_seconds_count": agent.total("policy_apply_latency_seconds_count"),
        "packet_process_time_count": agent.total("packet_process_time_count"),
    }

    def stored() -> dict[str, float | None]:
        return {name: prom.scalar(f'sum({PREFIX}{name}{{job="{JOB}"}})') for name in wanted}

    prom.wait_until(stored, lambda got: got == wanted, f"Prometheus to scrape {wanted}")


@dataclass
class Scraped:
    env: AgentLab
    prom: PrometheusServer


@pytest.fixture(scope="module")
def scraped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """One lab (in audit mode when parametrized so) scraped by Prometheus through two rounds of traffic."""
    audit = bool(getattr(request, "param", False))
    with agent_lab(DUAL_STACK_PODS, policies=[B_ON_TCP_80, BAD_CIDR_POLICY],
                   extra_args=["--audit"] if audit else []) as env:
        with PrometheusServer(env.lab, tmp_path_factory.mktemp("prometheus"), [TARGET]) as prom:
            prom.wait_until(lambda: prom.scalar(f'up{{job="{JOB}"}}'), lambda up: up == 1, "the first scrape")
            assert type_lines(env.agent.metrics()).get(PREFIX + "packet_count") == "counter", (
                "/metrics has no `# TYPE kube_network_policies_packet_count counter` line: it must be written by "
                "kube_netpol.observability.exposition.generate_text, not prometheus_client's generate_latest")
            # Two rounds with a policy change between: every counter moves between two scrapes.
            traffic(env, audit)
            wait_scraped(env, prom)
            env.apply(B_ON_TCP_80, BAD_CIDR_POLICY, deny_ingress("y"))
            traffic(env, audit)
            wait_scraped(env, prom)
            yield Scraped(env, prom)


# --------------------------------------------------------------------------- tests


def test_every_dashboard_query_returns_data_from_a_real_scrape(scraped: Scraped) -> None:
    prom = scraped.prom
    targets = dashboard_targets()
    values = template_variables(prom)
    enforcing = [t for t in targets if AUDIT_ONLY not in t[2]]
    check_queries(prom, enforcing, values)
    # The audit queries are valid and, while the agent enforces, empty (test_audit_... gives them data).
    for title, ref, expr in targets:
        if AUDIT_ONLY in expr:
            assert prom.query(substitute(expr, values)) == [], (title, ref)
    print(f"{len(enforcing)} dashboard queries returned data from a real Prometheus scrape of the agent")

    # The alert rules evaluate cleanly on real data; only the refused object alerts.
    rules = prom.wait_until(lambda: [r for g in prom.api("rules")["groups"] for r in g["rules"]],
                            lambda rules: rules and all(r["health"] == "ok" for r in rules),
                            "every alert rule to be evaluated without error")
    firing = {a["labels"]["alertname"]: a for a in prom.api("alerts")["alerts"]}
    assert set(firing) == {"KubeNetpolInvalidObjects"}, firing
    assert firing["KubeNetpolInvalidObjects"]["labels"]["kind"] == "NetworkPolicy"
    assert firing["KubeNetpolInvalidObjects"]["state"] == "firing"
    print(f"{len(rules)} alert rules evaluated by Prometheus on the agent's series; firing: {sorted(firing)}")


def test_prometheus_stores_the_documented_metric_types(scraped: Scraped) -> None:
    env, prom = scraped.env, scraped.prom
    documented = dict(re.findall(r"^\| `(kube_network_policies_\w+)` \| (\w+)", OBSERVABILITY_DOC.read_text(), re.MULTILINE))
    metadata = prom.api("metadata")
    ours = {name: entries[0]["type"] for name, entries in metadata.items() if name.startswith(PREFIX)}
    exported = {name for name in scrape(env).families if name.startswith(PREFIX)}
    assert set(ours) == exported, (
        f"Prometheus stores {sorted(set(ours) ^ exported)} under other names than the agent's families; "
        "/metrics must be written by kube_netpol.observability.exposition.generate_text")
    wrong = {name: (kind, documented.get(name)) for name, kind in ours.items() if documented.get(name) != kind}
    assert not wrong, f"type stored by Prometheus vs docs/observability.md: {wrong}"
    assert ours[PREFIX + "packet_count"] == "counter"
    print(f"Prometheus stores {len(ours)} kube_network_policies_* families with their documented types "
          f"({sum(kind == 'counter' for kind in ours.values())} counters, none untyped)")


def test_agent_down_alert_when_the_agent_stops(scraped: Scraped) -> None:
    # Ends the module's enforcing lab's agent: keep this the last test using it.
    env, prom = scraped.env, scraped.prom
    env.agent.stop()
    prom.wait_until(lambda: prom.scalar(f'up{{job="{JOB}"}}'), lambda up: up == 0, "a failed scrape")
    alerts = prom.wait_until(lambda: {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["alerts"]},
                             lambda alerts: "KubeNetpolAgentDown" in alerts, "KubeNetpolAgentDown")
    # `for: 5m`: pending until the agent has been down for five minutes.
    assert alerts["KubeNetpolAgentDown"] == "pending"
    print(f"KubeNetpolAgentDown is {alerts['KubeNetpolAgentDown']} once the agent stops")


@pytest.mark.parametrize("scraped", [True], indirect=True, ids=["audit"])
def test_audit_queries_return_data_in_audit_mode(scraped: Scraped) -> None:
    prom = scraped.prom
    audit_targets = [t for t in dashboard_targets() if AUDIT_ONLY in t[2]]
    assert audit_targets
    check_queries(prom, audit_targets, template_variables(prom))
    print(f"{len(audit_targets)} audit-mode dashboard queries returned data from a real scrape")
