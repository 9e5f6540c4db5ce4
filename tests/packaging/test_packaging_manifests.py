"""install.yaml, install-anp.yaml and the rendered chart: valid, consistent with each other and with the agent."""

from __future__ import annotations

import re
from typing import Any, Iterable

import pytest
from packaging_helpers import (
    REPO,
    agent_container,
    check_packaging,
    load_objects,
    only,
    parse_agent_args,
    rbac_rules,
    watched_rules,
)
from kubernetes_validate import utils as kubernetes_validate

from kube_netpol import __version__
from kube_netpol.agent.config import config_from_args

#: The oldest Kubernetes the chart's kubeVersion accepts, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
IMAGE = f"ghcr.io/kube-netpol/kube-netpol:v{__version__}"
#: Kinds without a schema in kubernetes-validate (custom resources).
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}


def _validate_all(objects: Iterable[dict[str, Any]]) -> list[str]:
    validated = []
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {path}: {err.message}")
        validated.append(obj["kind"])
    return validated


# --------------------------------------------------------------------------- schema validation

@pytest.mark.parametrize("name", ["install.yaml", "install-anp.yaml"])
def test_manifest_is_valid_kubernetes(name: str) -> None:
    kinds = _validate_all(load_objects(REPO / name))
    assert sorted(kinds) == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"])


def test_rendered_chart_is_valid_kubernetes(rendered_default: Any, rendered_full: Any) -> None:
    assert sorted(_validate_all(rendered_default.objects())) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"]
    )
    assert sorted(_validate_all(rendered_full.objects())) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet", "ConfigMap"]
    )
    # The `helm test` pod is a hook: not in the release's manifest, validated all the same.
    assert _validate_all(rendered_default.hook_objects("test")) == ["Pod"]


def test_validation_catches_a_broken_daemonset(install_objects: list[dict[str, Any]]) -> None:
    """The strict schema is really applied: a misspelt field fails."""
    import copy

    broken = copy.deepcopy(only(install_objects, "DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# --------------------------------------------------------------------------- the manifests agree with the chart

def agent_view(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """What the agent's behaviour and permissions depend on; labels added by Helm are left out."""
    daemonset = only(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = agent_container(objects)
    binding = only(objects, "ClusterRoleBinding")
    service = only(objects, "Service")
    return {
        "objects": sorted(
            (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""))
            for o in objects
            if o["kind"] not in ("ServiceMonitor", "PrometheusRule", "ConfigMap")
        ),
        "rules": rbac_rules(objects),
        "binding": (binding["roleRef"], binding["subjects"]),
        "service": service["spec"],
        "selector": daemonset["spec"]["selector"],
        "update_strategy": daemonset["spec"]["updateStrategy"],
        "pod": {key: pod.get(key) for key in (
            "serviceAccountName", "hostNetwork", "hostPID", "dnsPolicy", "priorityClassName", "nodeSelector",
            "tolerations", "terminationGracePeriodSeconds", "volumes",
        )},
        "container": {key: container.get(key) for key in (
            "name", "image", "imagePullPolicy", "args", "env", "ports", "livenessProbe", "readinessProbe",
            "resources", "securityContext", "volumeMounts",
        )},
    }


def test_default_chart_agrees_with_install_yaml(rendered_default: Any, install_objects: list[dict[str, Any]]) -> None:
    assert agent_view(rendered_default.objects()) == agent_view(install_objects)


def test_anp_chart_agrees_with_install_anp_yaml(rendered_full: Any, install_anp_objects: list[dict[str, Any]]) -> None:
    assert agent_view(rendered_full.objects()) == agent_view(install_anp_objects)


def test_the_two_manifests_differ_only_in_anp(install_objects: list[dict[str, Any]], install_anp_objects: list[dict[str, Any]]) -> None:
    plain, anp = agent_view(install_objects), agent_view(install_anp_objects)
    assert anp["rules"] - plain["rules"] == {
        (group, resource, verb)
        for group, resource in (("", "nodes"), ("policy.networking.k8s.io", "adminnetworkpolicies"),
                                ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
                                ("policy.networking.k8s.io", "clusternetworkpolicies"))
        for verb in ("get", "list", "watch")
    }
    assert plain["rules"] <= anp["rules"]
    changed = [(a, b) for a, b in zip(plain["container"]["args"], anp["container"]["args"]) if a != b]
    assert changed == [
        ("--enable-admin-network-policy=false", "--enable-admin-network-policy=true"),
        ("--enable-baseline-admin-network-policy=false", "--enable-baseline-admin-network-policy=true"),
        ("--enable-cluster-network-policy=false", "--enable-cluster-network-policy=true"),
    ]
    plain["container"].pop("args"), anp["container"].pop("args")
    plain.pop("rules"), anp.pop("rules")
    assert plain == anp


# --------------------------------------------------------------------------- the manifests agree with the agent

ALL_MANIFESTS = ["install.yaml", "install-anp.yaml", "chart default", "chart full"]


@pytest.fixture(params=ALL_MANIFESTS)
def manifest(request: pytest.FixtureRequest, install_objects: Any, install_anp_objects: Any,
             rendered_default: Any, rendered_full: Any) -> list[dict[str, Any]]:
    return {
        "install.yaml": install_objects,
        "install-anp.yaml": install_anp_objects,
        "chart default": rendered_default.objects(),
        "chart full": rendered_full.objects(),
    }[request.param]


def test_every_flag_exists_in_kube_netpol_run(manifest: list[dict[str, Any]]) -> None:
    args = agent_container(manifest)["args"]
    option_strings = {option for action in check_packaging.run_parser()._actions for option in action.option_strings}
    for arg in args:
        # argparse would accept an abbreviation; the manifests spell every flag out.
        assert arg.split("=", 1)[0] in option_strings, f"{arg!r} is not a flag of kube-netpol run"
    config_from_args(parse_agent_args(args))  # the values are accepted too


def test_rbac_grants_exactly_what_the_agent_watches(manifest: list[dict[str, Any]]) -> None:
    assert rbac_rules(manifest) == watched_rules(agent_container(manifest)["args"])


def test_metrics_port_probes_and_service_agree_with_the_bind_address(manifest: list[dict[str, Any]]) -> None:
    container = agent_container(manifest)
    config = config_from_args(parse_agent_args(container["args"]))
    host, port = config.metrics_bind_address
    assert host == ""  # all addresses: the kubelet probes the node's address
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = only(manifest, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]


def test_daemonset_runs_on_every_node_in_the_host_network(manifest: list[dict[str, Any]]) -> None:
    daemonset = only(manifest, "DaemonSet")
    assert daemonset["metadata"]["namespace"] == "kube-system"
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert only(manifest, "Service")["spec"]["selector"].items() <= labels.items()


def test_container_has_two_capabilities_and_is_not_privileged(manifest: list[dict[str, Any]]) -> None:
    security = agent_container(manifest)["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert security["runAsUser"] == 0  # capabilities are effective only for root
    pod = only(manifest, "DaemonSet")["spec"]["template"]["spec"]
    assert "hostPID" not in pod and "hostIPC" not in pod
    host_paths = [v["hostPath"] for v in pod["volumes"] if "hostPath" in v]
    assert host_paths == [{"path": "/run/xtables.lock", "type": "FileOrCreate"}]


def test_node_name_comes_from_the_downward_api(manifest: list[dict[str, Any]]) -> None:
    env = agent_container(manifest)["env"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in env


def test_memory_is_limited_and_cpu_is_not(manifest: list[dict[str, Any]]) -> None:
    resources = agent_container(manifest)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"memory"}


def test_one_image_reference_everywhere(manifest: list[dict[str, Any]]) -> None:
    assert agent_container(manifest)["image"] == IMAGE


def test_owned_files_name_only_the_current_image() -> None:
    files = ["install.yaml", "install-anp.yaml", "install-multinetwork.yaml", "Dockerfile", "docs/install.md", "docs/upgrade.md",
             "docs/configuration.md", "docs/troubleshooting.md", "charts/kube-netpol/values.yaml",
             "charts/kube-netpol/Chart.yaml"]
    references: set[str] = set()
    for name in files:
        references |= set(re.findall(r"ghcr\.io/kube-netpol/kube-netpol:[\w.-]+", (REPO / name).read_text()))
    assert references == {IMAGE}
    chart = (REPO / "charts/kube-netpol/Chart.yaml").read_text()
    assert re.search(r'^appVersion: "?v' + re.escape(__version__) + '"?$', chart, re.M)
