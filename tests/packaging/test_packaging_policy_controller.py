"""The chart's opt-in policy controller: off by default; when enabled a Deployment of the agent's image
with its own ServiceAccount and exactly the RBAC the controller declares it needs, valid Kubernetes,
flags its own parser takes, pods that the agent's DaemonSet and Service never select."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from kubernetes_validate import utils as kubernetes_validate
from packaging_helpers import agent_container, check_packaging, named, only, rbac_rules

from kube_netpol.advise.owned import required_rules
from kube_netpol.cli import build_parser
from kube_netpol.policy.selectors import parse_label_selector

NAME = "kube-netpol-policy-controller"
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def render(**values: Any) -> list[dict[str, Any]]:
    return check_packaging.render_chart({"policyController": {"enabled": True, **values}}).objects()


@pytest.fixture(scope="module")
def dry_run() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def writing() -> list[dict[str, Any]]:
    return render(dryRun=False, namespaces=["shop", "web"], writesPerSecond=2.5,
                  extraArgs=["--dns-selector=k8s-app=coredns"])


def controller_args(objects: list[dict[str, Any]]) -> argparse.Namespace:
    """The container's command and args, parsed by `kube-netpol`'s own parser (which refuses unknown flags)."""
    container = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kube-netpol", "policy-controller"]
    parser = build_parser()
    parser.exit_on_error = False
    try:
        return parser.parse_args([container["command"][1], *container["args"]])
    except SystemExit as err:
        pytest.fail(f"kube-netpol policy-controller rejects {container['args']}: {err}")


def test_off_by_default() -> None:
    objects = check_packaging.render_chart().objects()
    assert not [o for o in objects if "policy-controller" in o["metadata"]["name"]]


@pytest.mark.parametrize("values", [{}, {"dryRun": False}])
def test_rbac_is_exactly_what_the_controller_needs(values: dict[str, Any]) -> None:
    objects = render(**values)
    role = named(objects, "ClusterRole", NAME)
    assert rbac_rules(objects, role) == required_rules(dry_run=values.get("dryRun", True))
    binding = named(objects, "ClusterRoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "kube-system"}]
    named(objects, "ServiceAccount", NAME)
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NAME  # not the agent's
    # The agent's RBAC is what it was.
    assert rbac_rules(objects, named(objects, "ClusterRole", "kube-netpol")) == rbac_rules(
        check_packaging.render_chart().objects())


def test_values_become_the_controllers_flags(dry_run: list[dict[str, Any]], writing: list[dict[str, Any]]) -> None:
    args = controller_args(dry_run)
    assert args.dry_run is True and args.namespace is None and args.writes_per_second == 5.0
    args = controller_args(writing)
    assert args.dry_run is False and args.namespace == ["shop", "web"] and args.writes_per_second == 2.5
    assert str(args.dns_selector) == "k8s-app=coredns"
    container = named(writing, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]
    assert args.metrics_bind_address == ("", container["ports"][0]["containerPort"])
    assert {container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]} == {
        "/healthz", "/readyz"}
    assert container["image"] == agent_container(writing)["image"]  # one image


def test_the_deployment_is_valid_and_unprivileged(writing: list[dict[str, Any]]) -> None:
    for obj in writing:
        if "policy-controller" in obj["metadata"]["name"]:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
    deployment = named(writing, "Deployment", NAME)
    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]) == (1, {"type": "Recreate"})
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and "hostNetwork" not in pod
    container = pod["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}


def test_the_agent_never_selects_the_controller_pods(writing: list[dict[str, Any]]) -> None:
    controller_labels = named(writing, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    agent_labels = only(writing, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    daemonset = parse_label_selector(only(writing, "DaemonSet")["spec"]["selector"])
    deployment = parse_label_selector(named(writing, "Deployment", NAME)["spec"]["selector"])
    service = only(writing, "Service")["spec"]["selector"]
    assert not daemonset.matches(controller_labels) and not deployment.matches(agent_labels)
    assert not all(controller_labels.get(k) == v for k, v in service.items())  # the metrics Service: agents only
    assert deployment.matches(controller_labels)


def test_lint_and_schema() -> None:
    result = check_packaging.lint_chart({"policyController": {"enabled": True, "dryRun": False}})
    assert result.errors == 0 and result.problems == (), [str(m) for m in result.messages]
    for values, complaint in (({"writesPerSecond": 0}, "writesPerSecond"), ({"namespaces": ["Bad_NS"]}, "namespaces"),
                              ({"dryrun": False}, "dryrun"), ({"extraArgs": ["dry-run"]}, "extraArgs")):
        with pytest.raises(check_packaging.PackagingError, match=complaint):
            render(**values)
