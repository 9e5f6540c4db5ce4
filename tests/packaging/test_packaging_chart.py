"""The Helm chart, linted and rendered by the real Helm engine (helm-sdkpy)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from packaging_helpers import (
    FULL_VALUES,
    REPO,
    agent_container,
    check_packaging,
    only,
    parse_agent_args,
    rbac_rules,
    watched_rules,
)

from kube_netpol.agent.config import config_from_args

CHART = REPO / "charts" / "kube-netpol"


# --------------------------------------------------------------------------- lint

@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "everything-enabled"])
def test_chart_lints_clean(values: dict[str, Any] | None) -> None:
    result = check_packaging.lint_chart(values)
    assert result.charts_linted == 1
    assert result.errors == 0, [str(m) for m in result.messages]
    assert result.problems == (), [str(m) for m in result.problems]


def test_lint_sees_the_values_it_is_given() -> None:
    """lint_chart's values really reach Helm: a value against the schema is an error."""
    result = check_packaging.lint_chart({"failOpen": "no"})
    assert result.errors > 0
    assert any(m.path == "values.yaml" and m.severity >= check_packaging.WARNING for m in result.messages)


# --------------------------------------------------------------------------- values.schema.json

@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"queueBackend": "iptables"}, "/queueBackend"),
        ({"logFormat": "yaml"}, "/logFormat"),
        ({"failOpen": "false"}, "/failOpen"),
        ({"nfqueueId": 70000}, "/nfqueueId"),
        ({"metricsPort": 0}, "/metricsPort"),
        ({"extraArgs": ["audit"]}, "/extraArgs"),
        ({"failopen": False}, "failopen"),  # a misspelt key is refused, not ignored
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(check_packaging.PackagingError, match=complaint):
        check_packaging.render_chart(values)


# --------------------------------------------------------------------------- values become flags

def test_agent_values_become_the_agents_configuration() -> None:
    rendered = check_packaging.render_chart({
        "failOpen": False,
        "strictMode": False,
        "nfqueueId": 7,
        "metricsPort": 9191,
        "logFormat": "json",
        "verbosity": 2,
        "queueBackend": "xt",
        "extraArgs": ["--audit=true", "--exempt-root-traffic=false"],
    })
    objects = rendered.objects()
    container = agent_container(objects)
    config = config_from_args(parse_agent_args(container["args"]))
    assert (config.fail_open, config.strict_mode, config.nfqueue_id) == (False, False, 7)
    assert config.metrics_bind_address == ("", 9191)
    assert (config.log_format, config.verbosity, config.queue_backend) == ("json", 2, "xt")
    assert (config.audit, config.exempt_root_traffic) == (True, False)
    assert container["ports"][0]["containerPort"] == 9191
    assert only(objects, "Service")["spec"]["ports"][0]["port"] == 9191
    assert "drops new connections" in rendered.notes


def test_rbac_follows_each_switch_alone() -> None:
    for values, extra in (
        ({"adminNetworkPolicy": {"enabled": True}}, {"adminnetworkpolicies", "nodes"}),
        ({"baselineAdminNetworkPolicy": {"enabled": True}}, {"baselineadminnetworkpolicies", "nodes"}),
    ):
        objects = check_packaging.render_chart(values).objects()
        rules = rbac_rules(objects)
        assert rules == watched_rules(agent_container(objects)["args"])
        assert {resource for _, resource, _ in rules} == {"pods", "namespaces", "networkpolicies"} | extra


def test_image_values() -> None:
    objects = check_packaging.render_chart(
        {"image": {"repository": "registry.example/kube-netpol", "tag": "dev", "pullPolicy": "Always"}}
    ).objects()
    container = agent_container(objects)
    assert (container["image"], container["imagePullPolicy"]) == ("registry.example/kube-netpol:dev", "Always")


def test_other_release_names_and_an_existing_service_account() -> None:
    objects = check_packaging.render_chart(
        {"serviceAccount": {"create": False, "name": "netpol-agent"}}, release="edge", namespace="netpol"
    ).objects()
    assert "ServiceAccount" not in {o["kind"] for o in objects}
    daemonset = only(objects, "DaemonSet")
    assert daemonset["metadata"] == {**daemonset["metadata"], "name": "edge-kube-netpol", "namespace": "netpol"}
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == "netpol-agent"
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == only(objects, "ClusterRole")["metadata"]["name"] == "edge-kube-netpol"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "netpol-agent", "namespace": "netpol"}]


# --------------------------------------------------------------------------- optional objects

def test_defaults_have_no_servicemonitor_and_no_dashboard(rendered_default: Any) -> None:
    kinds = sorted(o["kind"] for o in rendered_default.objects())
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"])


def test_servicemonitor_scrapes_the_metrics_service(rendered_full: Any) -> None:
    objects = rendered_full.objects()
    monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # ...and selects no other Service of the release.
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "30s")


def test_servicemonitor_values() -> None:
    objects = check_packaging.render_chart(
        {"serviceMonitor": {"enabled": True, "interval": "10s", "scrapeTimeout": "5s", "labels": {"release": "prom"}}}
    ).objects()
    monitor = only(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert (monitor["spec"]["endpoints"][0]["interval"], monitor["spec"]["endpoints"][0]["scrapeTimeout"]) == ("10s", "5s")


def test_dashboard_configmap_holds_the_dashboard(rendered_full: Any) -> None:
    configmap = only(rendered_full.objects(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "kube-system"
    (key,) = configmap["data"]
    dashboard = json.loads(configmap["data"][key])
    assert dashboard == json.loads((CHART / "dashboards" / "kube-netpol.json").read_text())
    assert dashboard["panels"], "the dashboard has no panels"


def test_dashboard_in_another_namespace_with_folder_annotation() -> None:
    objects = check_packaging.render_chart({"grafanaDashboard": {
        "enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Networking"},
    }}).objects()
    configmap = only(objects, "ConfigMap")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Networking"}


def test_chart_dashboard_is_the_docs_dashboard() -> None:
    """The chart carries a copy of docs/grafana-dashboard.json (Helm reads files only inside the chart)."""
    assert check_packaging.check_dashboard(write=False), (
        "charts/kube-netpol/dashboards/kube-netpol.json differs from docs/grafana-dashboard.json; "
        "run: python scripts/check_packaging.py dashboard --write"
    )


def test_notes_mention_the_crds_only_when_needed(rendered_default: Any, rendered_full: Any) -> None:
    assert "adminnetworkpolicies.policy.networking.k8s.io" not in rendered_default.notes
    assert "adminnetworkpolicies.policy.networking.k8s.io" in rendered_full.notes
    assert "Enforced: NetworkPolicy." in rendered_default.notes
    assert "Enforced: NetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy." in rendered_full.notes
