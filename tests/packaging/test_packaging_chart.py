"""The Helm chart, linted and rendered by the real Helm engine (helm-sdkpy)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
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

from kube_netpol.agent.config import DEFAULT_VERDICT_MEMORY, config_from_args

CHART = REPO / "charts" / "kube-netpol"
ALERT_RULES = REPO / "docs" / "prometheus-alerts.yaml"


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
        ({"verdictMemory": {"timeoutSeconds": 0}}, "/verdictMemory/timeoutSeconds"),
        ({"verdictMemory": {"enabled": "yes"}}, "/verdictMemory/enabled"),
        ({"verdictMemory": {"timeout": 30}}, "timeout"),
        ({"extraArgs": ["audit"]}, "/extraArgs"),
        ({"failopen": False}, "failopen"),  # a misspelt key is refused, not ignored
        # ... at every level, not only the top one.
        ({"serviceMonitor": {"enabeld": True}}, "enabeld"),
        ({"grafanaDashboard": {"namspace": "monitoring"}}, "namspace"),
        ({"prometheusRule": {"enable": True}}, "enable"),
        ({"helmTest": {"enabeld": False}}, "enabeld"),
        ({"image": {"repository": "r", "pullPolicy": "Always", "tga": "dev"}}, "tga"),
        ({"serviceAccount": {"craete": False}}, "craete"),
        ({"resources": {"limit": {"memory": "1Gi"}}}, "limit"),
        ({"updateStrategy": {"rollingUpdate": {"maxSurg": 1}}}, "maxSurg"),
        ({"tolerations": [{"operater": "Exists"}]}, "operater"),
        ({"extraEnv": [{"name": "A", "vaule": "b"}]}, "vaule"),
        ({"extraVolumeMounts": [{"name": "v", "mountpath": "/v"}]}, "mountpath"),
        ({"extraVolumes": [{"name": "v", "hostpth": {"path": "/v"}}]}, "hostpth"),
        ({"extraVolumes": [{"name": "v"}]}, "/extraVolumes/0"),  # a volume needs a source
        ({"imagePullSecrets": [{"nmae": "regcred"}]}, "nmae"),
        ({"podLabels": {"team": 7}}, "/podLabels/team"),
        ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(check_packaging.PackagingError, match=complaint):
        check_packaging.render_chart(values)


def test_lint_refuses_a_nested_typo() -> None:
    """`helm lint` (the real Helm engine) reports a misspelt nested key, as docs/configuration.md promises."""
    result = check_packaging.lint_chart({"serviceMonitor": {"enabeld": True}})
    assert result.errors > 0
    assert any(m.path == "values.yaml" for m in result.problems)


def _schema_objects(node: Any, pointer: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object-typed node of the schema, with its JSON pointer."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield pointer, node
        for key, value in node.items():
            yield from _schema_objects(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _schema_objects(value, f"{pointer}/{index}")


#: Objects whose keys are free: Helm's globals, and Kubernetes objects the API server checks further.
FREE_OBJECTS = {"#/properties/global", "#/definitions/envVar/properties/valueFrom",
                "#/definitions/volumeMount/properties/bindMountOptions"}


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []
    for pointer, node in _schema_objects(schema):
        closed = node.get("additionalProperties") is False
        a_map = isinstance(node.get("additionalProperties"), dict) and ("properties" not in node or "propertyNames" in node)
        free = pointer in FREE_OBJECTS or pointer.startswith("#/properties/affinity/properties/") or pointer.endswith(
            "/additionalProperties")  # a volume source, a map's values
        if not (closed or a_map or free):
            open_objects.append(pointer)
    assert not open_objects, f"schema objects that accept any key: {open_objects}"


#: Kubernetes-shaped values and the Kubernetes type whose fields they accept (kubernetes-validate's schemas).
KUBERNETES_SHAPES = {
    "envVar": "envvar-v1", "volumeMount": "volumemount-v1", "volume": "volume-v1", "toleration": "toleration-v1",
    "resources": "resourcerequirements-v1",
}


def test_kubernetes_shaped_values_accept_exactly_the_kubernetes_fields() -> None:
    from kubernetes_validate import utils as kubernetes_validate

    schema = json.loads((CHART / "values.schema.json").read_text())
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{kubernetes_validate.latest_version()}-local"
    for definition, kubernetes_type in KUBERNETES_SHAPES.items():
        ours = schema["definitions"][definition]
        accepted = set(ours["propertyNames"]["enum"]) if "propertyNames" in ours else set(ours["properties"])
        theirs = set(json.loads((schemas / f"{kubernetes_type}.json").read_text())["properties"])
        assert accepted == theirs, (definition, sorted(accepted ^ theirs))


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
        "verdictMemory": {"enabled": False, "timeoutSeconds": 30},
        "extraArgs": ["--audit=true", "--exempt-root-traffic=false"],
    })
    objects = rendered.objects()
    container = agent_container(objects)
    config = config_from_args(parse_agent_args(container["args"]))
    assert (config.fail_open, config.strict_mode, config.nfqueue_id) == (False, False, 7)
    assert config.metrics_bind_address == ("", 9191)
    assert (config.log_format, config.verbosity, config.queue_backend) == ("json", 2, "xt")
    assert (config.verdict_memory, config.verdict_memory_timeout) == (False, 30)
    assert (config.audit, config.exempt_root_traffic) == (True, False)
    assert container["ports"][0]["containerPort"] == 9191
    assert only(objects, "Service")["spec"]["ports"][0]["port"] == 9191
    assert "drops new connections" in rendered.notes


@pytest.mark.parametrize(("values", "memory", "timeout"), [
    ({}, DEFAULT_VERDICT_MEMORY, 60),  # the agent's default: no --verdict-memory flag
    ({"extraArgs": ["--decision-log=/var/log/kube-netpol/d.jsonl"]}, False, 60),  # never on with decision records
    ({"verdictMemory": {"enabled": True}, "extraArgs": ["--log-decisions"]}, True, 60),  # the value wins
    ({"verdictMemory": {"enabled": False, "timeoutSeconds": 5}}, False, 5),
    ({"verdictMemory": None}, DEFAULT_VERDICT_MEMORY, 60),  # values of an older release (helm upgrade --reuse-values) lack it
])  # fmt: skip
def test_the_verdict_memory_value_becomes_the_agents_setting(values: dict[str, Any], memory: bool, timeout: int) -> None:
    container = agent_container(check_packaging.render_chart(values).objects())
    config = config_from_args(parse_agent_args(container["args"]))
    assert (config.verdict_memory, config.verdict_memory_timeout) == (memory, timeout)
    assert any(arg.startswith("--verdict-memory=") for arg in container["args"]) == isinstance(
        (values.get("verdictMemory") or {}).get("enabled"), bool)


def test_extra_env_volumes_and_mounts_carry_a_decision_log_and_an_evaluator_config() -> None:
    from kubernetes_validate import utils as kubernetes_validate

    rendered = check_packaging.render_chart({
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"},
                     {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "extraVolumes": [{"name": "evaluator-config", "configMap": {"name": "kube-netpol-evaluators"}},
                         {"name": "decisions", "hostPath": {"path": "/var/log/kube-netpol", "type": "DirectoryOrCreate"}}],
        "extraVolumeMounts": [{"name": "evaluator-config", "mountPath": "/etc/kube-netpol", "readOnly": True},
                              {"name": "decisions", "mountPath": "/var/log/kube-netpol"}],
        "extraArgs": ["--evaluator-config=/etc/kube-netpol/evaluators.yaml",
                      "--decision-log=/var/log/kube-netpol/decisions.jsonl"],
    })
    objects = rendered.objects()
    daemonset = only(objects, "DaemonSet")
    kubernetes_validate.validate(daemonset, kubernetes_validate.latest_version(), strict=True)
    pod = daemonset["spec"]["template"]["spec"]
    container = agent_container(objects)
    # Added after what the chart itself sets, which stays.
    assert [e["name"] for e in container["env"]] == ["NODE_NAME", "HTTPS_PROXY", "POD_IP"]
    assert container["env"][2]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert [v["name"] for v in pod["volumes"]] == ["xtables-lock", "tmp", "evaluator-config", "decisions"]
    assert pod["volumes"][2]["configMap"] == {"name": "kube-netpol-evaluators"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"xtables-lock", "tmp", "evaluator-config", "decisions"}
    assert mounts["evaluator-config"] == {"name": "evaluator-config", "mountPath": "/etc/kube-netpol", "readOnly": True}
    # The agent's own parser reads the flags (config_from_args would open the files, which live in the pod).
    args = parse_agent_args(container["args"])
    assert args.decision_log == "/var/log/kube-netpol/decisions.jsonl"
    assert args.evaluator_config == "/etc/kube-netpol/evaluators.yaml"
    # Each file's folder is a mounted volume (the root filesystem is read-only).
    for path in (args.decision_log, args.evaluator_config):
        assert any(path.startswith(m["mountPath"] + "/") for m in container["volumeMounts"]), path


def test_rbac_follows_each_switch_alone() -> None:
    for values, extra in (
        ({"adminNetworkPolicy": {"enabled": True}}, {"adminnetworkpolicies", "nodes"}),
        ({"baselineAdminNetworkPolicy": {"enabled": True}}, {"baselineadminnetworkpolicies", "nodes"}),
        ({"clusterNetworkPolicy": {"enabled": True}}, {"clusternetworkpolicies", "nodes"}),
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

def test_defaults_have_no_servicemonitor_no_rules_and_no_dashboard(rendered_default: Any) -> None:
    kinds = sorted(o["kind"] for o in rendered_default.objects())
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"])


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://")
    assert chart["sources"] and all(source.startswith("https://") for source in chart["sources"])
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
    readme = (CHART / "README.md").read_text()
    for topic in ("helm install", "helm test", "helm uninstall", "extraVolumes", "prometheusRule", "kube-netpol cleanup"):
        assert topic in readme, topic


def test_helmignore_keeps_junk_out_and_the_charts_files_in(tmp_path: Path) -> None:
    """Helm applies .helmignore when it loads the chart: ignored junk in templates/ is not rendered."""
    copy = tmp_path / "kube-netpol"
    shutil.copytree(CHART, copy)
    for junk in ("templates/daemonset.yaml.bak", "templates/daemonset.yaml~", "templates/.#daemonset.yaml",
                 "templates/daemonset.yaml.swp", "templates/daemonset.yaml.orig", "templates/notes.tmp"):
        (copy / junk).write_text("{{ this is not a template\n")
    rendered = check_packaging.render_chart(FULL_VALUES, chart=copy)
    kinds = {o["kind"] for o in rendered.objects()}
    # The dashboard and the rules are read from the chart's own files: .helmignore keeps them.
    assert {"ConfigMap", "PrometheusRule", "DaemonSet"} <= kinds
    (copy / "templates" / "broken.yaml").write_text("{{ this is not a template\n")
    with pytest.raises(check_packaging.PackagingError):
        check_packaging.render_chart(chart=copy)  # the same junk, not ignored, breaks the render


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


def test_servicemonitor_names_the_job_the_alert_rules_select(rendered_full: Any) -> None:
    objects = rendered_full.objects()
    monitor = only(objects, "ServiceMonitor")
    label = monitor["spec"]["jobLabel"]
    assert only(objects, "Service")["metadata"]["labels"][label] == "kube-netpol"
    assert 'job="kube-netpol"' in ALERT_RULES.read_text()


def test_prometheusrule_holds_the_alert_rules(rendered_full: Any, tmp_path: Path) -> None:
    rule = only(rendered_full.objects(), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "kube-system"
    assert rule["spec"] == yaml.safe_load(ALERT_RULES.read_text())
    # What the operator hands Prometheus is a valid rule file.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing (apt-get install prometheus)")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheusrule_values_and_job_of_another_chart_name() -> None:
    objects = check_packaging.render_chart(
        {"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}, "serviceMonitor": {"enabled": True},
         "nameOverride": "netpol"}).objects()
    rule = only(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert not any('job="kube-netpol"' in e for e in exprs)
    assert sum('job="netpol"' in e for e in exprs) == len(exprs) - 1  # all but the kube-state-metrics one
    monitor = only(objects, "ServiceMonitor")
    assert only(objects, "Service")["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "netpol"


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


# --------------------------------------------------------------------------- helm test

def test_helm_test_pod_asks_the_metrics_service_for_readyz(rendered_default: Any) -> None:
    (pod,) = rendered_default.hook_objects("test")
    assert pod["kind"] == "Pod" and pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == agent_container(rendered_default.objects())["image"]
    script, host, port = container["args"]
    service = only(rendered_default.objects(), "Service")
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert int(port) == service["spec"]["ports"][0]["port"] == 9080
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert not check_packaging.render_chart({"helmTest": {"enabled": False}}).hook_objects("test")


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_helm_test_script_passes_only_when_every_agent_is_ready(rendered_default: Any, status: int, exit_code: int) -> None:
    """The pod's own script, run here against a stand-in agent on 127.0.0.1."""
    (pod,) = rendered_default.hook_objects("test")
    script = pod["spec"]["containers"][0]["args"][0]
    handler = type("Handler", (_Readyz,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = subprocess.run([sys.executable, "-c", script, "127.0.0.1", str(server.server_port)],
                                capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert f"http://127.0.0.1:{server.server_port}/readyz" in result.stdout


def test_helm_test_script_fails_without_agents(rendered_default: Any) -> None:
    (pod,) = rendered_default.hook_objects("test")
    script = pod["spec"]["containers"][0]["args"][0]
    result = subprocess.run([sys.executable, "-c", script, "no-such-service.invalid", "9080"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no agent behind no-such-service.invalid" in result.stderr



def test_multinetwork_value_enables_the_plugin_its_rbac_and_the_pod_namespaces() -> None:
    objects = check_packaging.render_chart({"multiNetworkPolicy": {"enabled": True}}).objects()
    container = agent_container(objects)
    args = parse_agent_args(container["args"])
    assert args.evaluators == ("networkpolicy", "multinetwork")
    assert (args.pod_netns_lookup, args.host_proc, args.pod_netns_dir) == ("cgroup", "/proc", None)
    rules = rbac_rules(objects)
    assert rules == watched_rules(container["args"])
    assert {resource for _, resource, _ in rules} >= {"multi-networkpolicies", "network-attachment-definitions"}
    assert {"SYS_ADMIN", "SYS_PTRACE"} <= set(container["securityContext"]["capabilities"]["add"])
    assert only(objects, "DaemonSet")["spec"]["template"]["spec"]["hostPID"] is True
    default = agent_container(check_packaging.render_chart({}).objects())
    assert not any("multinetwork" in arg for arg in default["args"])
