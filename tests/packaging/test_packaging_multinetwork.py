"""install-multinetwork.yaml and the chart's multiNetworkPolicy value: valid, agreeing, and what entering pods needs."""

from __future__ import annotations

from typing import Any

import pytest
from packaging_helpers import (
    REPO, agent_container, check_packaging, load_objects, only, parse_agent_args, rbac_rules, watched_rules,
)
from test_packaging_manifests import _validate_all, agent_view

MULTINETWORK = {"multiNetworkPolicy": {"enabled": True}}


@pytest.fixture(scope="module")
def manifest() -> list[dict[str, Any]]:
    return load_objects(REPO / "install-multinetwork.yaml")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return check_packaging.render_chart(MULTINETWORK).objects()


def test_install_multinetwork_yaml_is_valid_kubernetes(manifest: list[dict[str, Any]]) -> None:
    assert sorted(_validate_all(manifest)) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"])


def test_the_chart_with_multinetwork_agrees_with_install_multinetwork_yaml(
        manifest: list[dict[str, Any]], rendered: list[dict[str, Any]]) -> None:
    assert agent_view(rendered) == agent_view(manifest)
    for objects in (manifest, rendered):
        assert only(objects, "DaemonSet")["spec"]["template"]["spec"]["hostPID"] is True


def test_install_multinetwork_yaml_reads_both_kinds_and_can_enter_pods(manifest: list[dict[str, Any]]) -> None:
    container = agent_container(manifest)
    args = parse_agent_args(container["args"])
    assert args.evaluators == ("networkpolicy", "multinetwork")
    assert (args.pod_netns_lookup, args.host_proc, args.pod_netns_dir) == ("cgroup", "/proc", None)
    rules = rbac_rules(manifest)
    assert rules == watched_rules(container["args"])
    assert {(g, r) for g, r, _ in rules} >= {("k8s.cni.cncf.io", "multi-networkpolicies"),
                                            ("k8s.cni.cncf.io", "network-attachment-definitions")}
    assert not any(verb not in ("get", "list", "watch") for _, _, verb in rules)
    capabilities = container["securityContext"]["capabilities"]
    assert set(capabilities["add"]) == {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}
    assert capabilities["drop"] == ["ALL"] and container["securityContext"]["privileged"] is False
    # The cgroup lookup reads the node's /proc through hostPID: no host folder is mounted for it.
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/run/xtables.lock", "/tmp"}


def test_the_dir_lookup_mounts_the_folder_and_the_runtime_namespaces() -> None:
    objects = check_packaging.render_chart(
        {"multiNetworkPolicy": {"enabled": True, "podNetnsLookup": "dir", "podNetnsDir": "/run/links"}}).objects()
    container = agent_container(objects)
    args = parse_agent_args(container["args"])
    assert (args.pod_netns_lookup, args.pod_netns_dir) == ("dir", "/run/links")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/run/links"]["mountPropagation"] == mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert mounts["/run/links"]["readOnly"] is True
    volumes = {v["name"]: v for v in only(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["pod-netns"]["hostPath"]["path"] == "/run/links"


def test_the_image_installs_the_plugin() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "./plugins/kube-netpol-multinetwork" in dockerfile and "kube-netpol-multinetwork" in dockerfile.split(
        "COPY --from=builder", 1)[1]
